"""Conformance: snapshots to and restores from S3 (the moto server, through s3fs)."""

import pytest

from statebackend import BackendConfig, CorruptCheckpointError, MapStateDescriptor, create_backend
from statebackend.dfs import filesystem
from tests.conformance.conftest import checkpoint_files

# Every backend's snapshots on S3 (the `lsm-s3` variant also runs the whole suite there).
pytestmark = pytest.mark.parametrize("variant", ["memory", "rocksdb", "lsm"], indirect=True)


@pytest.fixture
def s3_config(backend_name: str, s3_bucket, tmp_path) -> BackendConfig:
    return BackendConfig(
        backend_name,
        checkpoint_dir=s3_bucket.path("checkpoints"),
        local_dir=str(tmp_path / "local"),
        storage_options=s3_bucket.storage_options,
    )


def test_snapshot_and_restore_on_s3(s3_config: BackendConfig) -> None:
    backend = create_backend(s3_config, scope="job/op/0")
    state = backend.get_state(MapStateDescriptor("m"))
    for i in range(200):
        backend.set_current_key(i)
        state.put_all({"n": i, "blob": bytes(range(256)) * 8})
    handle = backend.snapshot(1)
    backend.set_current_key(0)
    state.put("n", "changed after the snapshot")
    backend.dispose()
    restored = create_backend(s3_config, scope="job/op/0", restore=handle.to_dict())
    restored_state = restored.get_state(MapStateDescriptor("m"))
    assert sorted(restored.keys("m")) == list(range(200))
    for i in range(200):
        restored.set_current_key(i)
        assert restored_state.get("n") == i
    restored.dispose()


def test_corrupted_object_on_s3_is_detected(s3_config: BackendConfig) -> None:
    backend = create_backend(s3_config, scope="job/op/0")
    backend.set_current_key("k")
    backend.get_state(MapStateDescriptor("m")).put("a", "b" * 500)
    handle = backend.snapshot(1).to_dict()
    backend.dispose()
    fs, path = filesystem(checkpoint_files(handle)[-1], s3_config.storage_options)
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0x01
    fs.pipe_file(path, bytes(data))
    with pytest.raises(CorruptCheckpointError, match="corrupted"):
        create_backend(s3_config, scope="job/op/0", restore=handle)
