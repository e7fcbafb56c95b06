"""The `memory` backend: state in a sorted in-process dict, snapshotted as one file.

Reads and writes are dictionary operations. A snapshot writes the whole map, msgpack-encoded and
zstd-compressed, to `checkpoint_dir/scope/chk-<id>/` with its size and checksum in the handle.
A rescaled store reads the old subtasks' files and keeps the entries of its key groups. A native
savepoint is the same file, written into the savepoint's directory.
"""

import bisect
import uuid
from collections.abc import Iterator, Sequence

import msgpack
import zstandard
from sortedcontainers import SortedDict

from statebackend import dfs
from statebackend.errors import CorruptCheckpointError, InvalidHandleError
from statebackend.store import RescaleSource, StoreContext, StoreHandle, key_range


class MemoryStore:
    def __init__(self, context: StoreContext, data: SortedDict | None = None):
        self._context = context
        self._data: SortedDict = SortedDict() if data is None else data
        self.get = self._data.get

    def put(self, key: bytes, value: bytes) -> None:
        self._data[key] = value

    def delete(self, key: bytes) -> None:
        self._data.pop(key, None)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        data = self._data
        # Copied now, so the scan is a point-in-time view that later writes do not disturb.
        return iter([(k, data[k]) for k in data.irange(start, end, inclusive=(True, False))])

    def snapshot(self, checkpoint_id: int) -> StoreHandle:
        directory = dfs.join(
            self._context.checkpoint_dir, self._context.scope, f"chk-{checkpoint_id}"
        )
        return self._write(directory)

    def savepoint(self, checkpoint_id: int, directory: str) -> StoreHandle:
        return self._write(directory)

    def _write(self, directory: str) -> StoreHandle:
        body = msgpack.packb([list(self._data.keys()), list(self._data.values())])
        url = dfs.join(directory, f"memory-{uuid.uuid4().hex}.msgpack.zst")
        ref = dfs.write_bytes(url, zstandard.compress(body), self._context.storage_options)
        return {"file": ref.to_dict(), "entries": len(self._data)}

    def release(self, handle: StoreHandle, retained: Sequence[StoreHandle]) -> None:
        path = handle["file"]["path"]
        if all(kept["file"]["path"] != path for kept in retained):
            dfs.delete_file(path, self._context.storage_options)

    def dispose(self) -> None:
        self._data.clear()


class MemoryStoreFactory:
    name = "memory"

    def open(self, context: StoreContext, restore: StoreHandle | None) -> MemoryStore:
        if restore is None:
            return MemoryStore(context)
        keys, values = _read_snapshot(context, restore)
        return MemoryStore(context, SortedDict(zip(keys, values, strict=True)))

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        keys, values = _read_snapshot(context, handle)
        first, last = bisect.bisect_left(keys, start), bisect.bisect_left(keys, end)
        yield from zip(keys[first:last], values[first:last], strict=True)

    def open_rescaled(self, context: StoreContext, sources: Sequence[RescaleSource]) -> MemoryStore:
        data = SortedDict()
        for source in sources:
            start, end = key_range(source.key_groups, context.key_group_range)
            data.update(self.export(context, source.handle, start, end))
        return MemoryStore(context, data)


def _read_snapshot(context: StoreContext, handle: StoreHandle) -> tuple[list[bytes], list[bytes]]:
    """The keys (in order) and values of a snapshot file, verified."""
    try:
        ref = dfs.FileRef.from_dict(handle["file"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidHandleError(f"malformed memory store handle: {e!r}") from e
    data = dfs.read_verified(ref, context.storage_options)
    try:
        keys, values = msgpack.unpackb(zstandard.decompress(data))
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
    except Exception as e:
        raise CorruptCheckpointError(f"cannot decode checkpoint file {ref.path}: {e}") from e
    return keys, values
