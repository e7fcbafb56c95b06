"""The memory backend's snapshot files."""

from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from statebackend.dfs import filesystem


def test_release_deletes_the_dropped_snapshot_file(tmp_path) -> None:
    backend = create_backend(
        BackendConfig("memory", checkpoint_dir=f"file://{tmp_path}/chk"), scope="op/0"
    )
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("v")).update(1)
    first, second = backend.snapshot(1), backend.snapshot(2)
    backend.release(first, [second])
    fs, _ = filesystem(f"file://{tmp_path}", {})
    assert not fs.exists(first.store["file"]["path"].removeprefix("file://"))
    assert fs.exists(second.store["file"]["path"].removeprefix("file://"))
