"""The rocksdb backend's incremental checkpoints (shared SSTs are uploaded once) and its classic
rescale (a new database from the overlapping snapshots, clipped to its key groups)."""

from statebackend import (
    BackendConfig,
    KeyGroupRange,
    ValueStateDescriptor,
    create_backend,
    key_group_of,
)
from statebackend.dfs import filesystem
from statebackend.rocksdb import RocksDBStoreFactory
from statebackend.serializers import DEFAULT_SERIALIZER
from statebackend.store import RescaleSource, StoreContext


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


def test_a_rescaled_store_holds_its_key_groups_and_shares_no_file_with_the_old_ones(
    tmp_path,
) -> None:
    config = BackendConfig(
        "rocksdb", checkpoint_dir=f"file://{tmp_path}/chk", local_dir=str(tmp_path / "local")
    )
    handles = []
    for index in range(2):
        key_groups = KeyGroupRange.of_subtask(128, 2, index)
        backend = create_backend(config, scope=f"old/{index}", key_group_range=key_groups)
        state = backend.get_state(ValueStateDescriptor("v"))
        for i in range(2000):
            if key_group_of(DEFAULT_SERIALIZER.serialize(i), 128) in key_groups:
                backend.set_current_key(i)
                state.update(i)
        handles.append(backend.snapshot(1))
        backend.dispose()
    target = KeyGroupRange.of_subtask(128, 3, 1)  # 43..84: parts of both old subtasks
    context = StoreContext(
        scope="new/1",
        key_group_range=target,
        checkpoint_dir=config.checkpoint_dir,
        local_dir=config.local_dir,
    )
    sources = [RescaleSource(h.store, h.key_group_range) for h in handles]
    store = RocksDBStoreFactory().open_rescaled(context, sources)
    keys = [key for key, _ in store.scan(b"", b"\xff")]
    assert keys and {int.from_bytes(key[:2], "big") for key in keys} <= set(target)
    assert len(keys) == sum(
        key_group_of(DEFAULT_SERIALIZER.serialize(i), 128) in target for i in range(2000)
    )
    # Only the new database is left locally (the other snapshot was read from a temporary copy),
    # and its snapshot uploads its own files: releasing the old snapshots cannot touch it.
    local = tmp_path / "local"
    files = [p.relative_to(local).parts for p in local.rglob("*") if p.is_file()]
    assert files and all(parts[:2] == ("new", "1") for parts in files)
    old_files = {f["path"] for h in handles for f in h.store["files"]}
    new_files = {f["path"] for f in store.snapshot(2)["files"]}
    assert not new_files & old_files
    assert all("/chk/new/1/" in path for path in new_files)
    store.dispose()
