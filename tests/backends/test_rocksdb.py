"""The rocksdb backend's incremental checkpoints: shared SSTs are uploaded once."""

from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from statebackend.dfs import filesystem


def _sst_paths(handle) -> dict[str, str]:
    return {f["name"]: f["path"] for f in handle.store["files"] if f["name"].endswith(".sst")}


def test_second_checkpoint_references_unchanged_ssts(tmp_path) -> None:
    config = BackendConfig(
        "rocksdb", checkpoint_dir=f"file://{tmp_path}/chk", local_dir=str(tmp_path / "local")
    )
    backend = create_backend(config, scope="op/0")
    state = backend.get_state(ValueStateDescriptor("v"))
    for i in range(1000):
        backend.set_current_key(i)
        state.update(i)
    first = _sst_paths(backend.snapshot(1))
    for i in range(1000, 1100):
        backend.set_current_key(i)
        state.update(i)
    second = _sst_paths(backend.snapshot(2))
    third = _sst_paths(backend.snapshot(3))
    assert first, "the first checkpoint uploaded no SST"
    for name, path in first.items():
        assert second[name] == path, "an unchanged SST was uploaded again"
    assert len(set(second) - set(first)) == 1  # only the newly flushed SST
    assert third == second  # nothing new: nothing uploaded
    fs, shared = filesystem(f"file://{tmp_path}/chk/op/0/shared", {})
    assert len(fs.ls(shared)) == len(second)
    backend.dispose()


def test_restored_backend_keeps_sharing_uploaded_ssts(tmp_path) -> None:
    config = BackendConfig(
        "rocksdb", checkpoint_dir=f"file://{tmp_path}/chk", local_dir=str(tmp_path / "local")
    )
    backend = create_backend(config, scope="op/0")
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("v")).update("x")
    handle = backend.snapshot(1)
    backend.dispose()
    restored = create_backend(config, scope="op/0", restore=handle)
    restored.set_current_key("k2")
    restored.get_state(ValueStateDescriptor("v")).update("y")
    after = _sst_paths(restored.snapshot(2))
    for name, path in _sst_paths(handle).items():
        assert after[name] == path
    restored.dispose()


def test_release_deletes_the_files_only_a_dropped_checkpoint_used(tmp_path) -> None:
    config = BackendConfig(
        "rocksdb", checkpoint_dir=f"file://{tmp_path}/chk", local_dir=str(tmp_path / "local")
    )
    backend = create_backend(config, scope="op/0")
    state = backend.get_state(ValueStateDescriptor("v"))
    handles = []
    for round_ in range(3):
        for i in range(300):
            backend.set_current_key(i)
            state.update((round_, i))
        handles.append(backend.snapshot(round_ + 1))
    first, *retained = handles
    backend.release(first, retained)
    kept = {f["path"] for handle in retained for f in handle.store["files"]}
    for file in first.store["files"]:
        fs, path = filesystem(file["path"], {})
        assert fs.exists(path) == (file["path"] in kept), file["name"]
    backend.dispose()
