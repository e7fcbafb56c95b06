"""The generic rescale path of `create_backend`: a backend without `open_rescaled` gets a new
empty store filled from `export` of each old snapshot; one without `export` is refused clearly."""

from collections.abc import Iterator

import pytest

from statebackend import (
    BackendConfig,
    KeyGroupRange,
    RestoreError,
    ValueStateDescriptor,
    create_backend,
    register_backend,
)
from statebackend.memory import MemoryStore, MemoryStoreFactory
from statebackend.store import StoreContext, StoreHandle

COUNT = ValueStateDescriptor("count")


class ExportOnly:
    """The memory backend without a native rescale."""

    name = "export-only"

    def __init__(self) -> None:
        self._memory = MemoryStoreFactory()
        self.exported = 0

    def open(self, context: StoreContext, restore: StoreHandle | None) -> MemoryStore:
        return self._memory.open(context, restore)

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        self.exported += 1
        return self._memory.export(context, handle, start, end)


class NoExport:
    name = "no-export"

    def open(self, context: StoreContext, restore: StoreHandle | None) -> MemoryStore:
        return MemoryStoreFactory().open(context, restore)


def ranges(parallelism: int) -> list[KeyGroupRange]:
    return [KeyGroupRange.of_subtask(128, parallelism, i) for i in range(parallelism)]


def snapshots(config: BackendConfig, keys: range) -> list:
    handles = []
    for index, key_groups in enumerate(ranges(2)):
        backend = create_backend(config, scope=f"op/{index}", key_group_range=key_groups)
        count = backend.get_state(COUNT)
        for key in keys:
            try:
                backend.set_current_key(key)
            except ValueError:  # another subtask's key
                continue
            count.update(key * 10)
        handles.append(backend.snapshot(1))
        backend.dispose()
    return handles


def test_a_backend_without_open_rescaled_is_filled_from_export(tmp_path) -> None:
    factory = ExportOnly()
    register_backend(factory)
    config = BackendConfig("export-only", checkpoint_dir=f"file://{tmp_path}/chk")
    handles = snapshots(config, range(300))
    seen = {}
    for index, key_groups in enumerate(ranges(3)):
        backend = create_backend(
            config, scope=f"op/{index}", key_group_range=key_groups, restore=handles
        )
        count = backend.get_state(COUNT)
        for key in backend.keys("count"):
            backend.set_current_key(key)
            seen[key] = count.value()
        backend.dispose()
    assert seen == {key: key * 10 for key in range(300)}
    assert factory.exported == 4  # subtask 1 of 3 overlaps both old subtasks


def test_a_backend_without_export_cannot_rescale(tmp_path) -> None:
    register_backend(NoExport())
    config = BackendConfig("no-export", checkpoint_dir=f"file://{tmp_path}/chk")
    handles = snapshots(config, range(10))
    with pytest.raises(RestoreError, match="'no-export' backend cannot restore snapshots of other"):
        create_backend(config, scope="op/0", restore=handles)
