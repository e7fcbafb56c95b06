"""The state layer's savepoint plumbing for any backend: a store without native savepoints is told
to take a canonical one, an unknown format is refused, disposal reaches a factory's
`dispose_savepoint` for native handles only, and file references are made relative to a
savepoint's directory and resolved back (`statebackend.dfs`)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from statebackend import (
    BackendConfig,
    StateError,
    ValueStateDescriptor,
    create_backend,
    dfs,
    register_backend,
)
from statebackend.memory import MemoryStore, MemoryStoreFactory
from statebackend.registry import dispose_savepoint
from statebackend.store import StoreContext, StoreHandle

COUNT = ValueStateDescriptor("count")


class _NoNativeSavepoints:
    """The memory backend's store without `savepoint`."""

    def __init__(self, store: MemoryStore) -> None:
        self.get, self.put, self.delete = store.get, store.put, store.delete
        self.scan, self.snapshot, self.release = store.scan, store.snapshot, store.release
        self.dispose = store.dispose


class NoNativeSavepoints:
    """A backend whose stores cannot write native savepoints, and which records disposals."""

    name = "no-native-savepoints"

    def __init__(self) -> None:
        self.disposed: list[tuple[str, StoreHandle]] = []

    def open(self, context: StoreContext, restore: StoreHandle | None) -> _NoNativeSavepoints:
        return _NoNativeSavepoints(MemoryStoreFactory().open(context, restore))

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        return MemoryStoreFactory().export(context, handle, start, end)

    def dispose_savepoint(self, context: StoreContext, handle: StoreHandle) -> None:
        self.disposed.append((context.scope, handle))


def test_a_store_without_native_savepoints_names_canonical_and_disposal_reaches_it(
    tmp_path: Path,
) -> None:
    factory = NoNativeSavepoints()
    register_backend(factory)
    config = BackendConfig(factory.name, checkpoint_dir=(tmp_path / "c").as_uri())
    backend = create_backend(config, scope="op/0")
    count = backend.get_state(COUNT)
    for key in range(20):
        backend.set_current_key(key)
        count.update(key)
    directory = (tmp_path / "savepoint").as_uri()
    with pytest.raises(StateError, match=r"cannot write native savepoints.*--format canonical"):
        backend.savepoint(1, directory, "native")
    with pytest.raises(StateError, match="unknown savepoint format 'zip'"):
        backend.savepoint(1, directory, "zip")
    assert not (tmp_path / "savepoint").exists()
    canonical = backend.savepoint(1, directory, "canonical")
    restored = create_backend(config, scope="op/1", restore=canonical)
    restored.set_current_key(7)
    assert restored.get_state(COUNT).value() == 7
    dispose_savepoint(config, canonical)  # nothing outside its directory: no backend call
    assert factory.disposed == []
    native = backend.snapshot(2).to_dict()
    dispose_savepoint(config, native)
    assert factory.disposed == [("op/0", native["store"])]
    backend.dispose()
    restored.dispose()


def test_file_references_inside_a_directory_become_relative_and_resolve_back() -> None:
    base = "s3://bucket/savepoints/sp-1"
    metadata = {
        "operators": {
            "count": {
                "subtasks": [
                    {"store": {"file": {"path": f"{base}/op/0/a.zst", "size": 3, "checksum": "x"}}},
                    {"files": [{"name": "b", "path": f"{base}-2/b", "size": 1, "checksum": "y"}]},
                    {"db_root": f"{base}/root", "manifest": {"path": "/abs/m", "size": 2}},
                ]
            }
        }
    }
    relative = dfs.relativize(metadata, base + "/")
    subtasks = relative["operators"]["count"]["subtasks"]
    assert subtasks[0]["store"]["file"]["path"] == "op/0/a.zst"
    assert subtasks[1]["files"][0]["path"] == f"{base}-2/b"  # another directory: kept whole
    assert subtasks[2]["db_root"] == f"{base}/root"  # not a file reference
    assert subtasks[2]["manifest"]["path"] == "/abs/m"
    assert dfs.resolve(relative, "file:///moved/sp") == {
        "operators": {
            "count": {
                "subtasks": [
                    {
                        "store": {
                            "file": {
                                "path": "file:///moved/sp/op/0/a.zst",
                                "size": 3,
                                "checksum": "x",
                            }
                        }
                    },
                    subtasks[1],
                    subtasks[2],
                ]
            }
        }
    }
    assert metadata["operators"]["count"]["subtasks"][0]["store"]["file"]["path"].startswith(base)
