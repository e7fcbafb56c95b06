"""Canonical savepoints: one subtask's keyed state as a stream of entries that any backend wrote
and any backend restores, at any parallelism (how a job moves from rocksdb to lsm, say).

A canonical savepoint of one subtask is one file: a zstd frame (with its content checksum) of
msgpack objects, written and read in chunks, never all in memory: the header
`{"format": "streamlet-canonical", "version": 1}`, then `[key, value]` pairs in ascending key
order. Keys and values are the physical entries every key-value backend stores
(`statebackend.layout`: key group, state id, key, namespace, map key; values in their TTL envelope,
`statebackend.ttl`); entries that had expired when it was written are left out.

Its `StateHandle` has the backend name `canonical`, the key groups, the maximum parallelism and
the states by name (the ids the file's keys use, their kind and TTL); the store part is
`{"file": FileRef dict, "entries": n, "written_by": the backend it was written from}`. Restoring
one (`statebackend.registry.create_backend`) fills a new empty store of any backend with the
entries of its key groups (`export`).
"""

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import msgpack
import xxhash
import zstandard

from statebackend import dfs
from statebackend.errors import (
    CorruptCheckpointError,
    InvalidHandleError,
    MissingCheckpointDataError,
)
from statebackend.store import StoreHandle

CANONICAL = "canonical"
_HEADER = {"format": "streamlet-canonical", "version": 1}
_CHUNK = 1 << 20


class _Digesting:
    """A binary stream that counts and checksums (xxh3-64) the bytes written to or read from it."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = xxhash.xxh3_64()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data

    def flush(self) -> None:
        self.stream.flush()


def write(
    entries: Iterable[tuple[bytes, bytes]],
    url: str,
    storage_options: Mapping[str, Any],
    written_by: str,
) -> StoreHandle:
    """Write `entries` (in ascending key order) as the canonical file at `url`; its store handle."""
    fs, path = dfs.filesystem(url, storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    packer = msgpack.Packer()
    count = 0
    with fs.open(path, "wb") as raw:
        sink = _Digesting(raw)
        compressor = zstandard.ZstdCompressor(write_checksum=True)
        with compressor.stream_writer(sink, closefd=False) as out:  # type: ignore[arg-type]
            buffer = bytearray(packer.pack(_HEADER))
            for key, value in entries:
                buffer += packer.pack((key, value))
                count += 1
                if len(buffer) >= _CHUNK:
                    out.write(buffer)
                    buffer.clear()
            out.write(buffer)
    ref = dfs.FileRef(url, sink.size, sink.digest.hexdigest())
    return {"file": ref.to_dict(), "entries": count, "written_by": written_by}


def export(
    handle: StoreHandle, start: bytes, end: bytes, storage_options: Mapping[str, Any]
) -> Iterator[tuple[bytes, bytes]]:
    """The entries of a canonical file with `start <= key < end`, in key order.

    The whole file is read (its size, checksum and entry count are verified at its end), so a
    restore that consumes this iterator never runs on a damaged file: `CorruptCheckpointError`
    (or `MissingCheckpointDataError`) is raised instead.
    """
    try:
        ref = dfs.FileRef.from_dict(handle["file"])
        expected = int(handle["entries"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidHandleError(f"malformed canonical savepoint handle: {e!r}") from e
    fs, path = dfs.filesystem(ref.path, storage_options)
    try:
        raw = fs.open(path, "rb")
    except FileNotFoundError as e:
        raise MissingCheckpointDataError(f"savepoint file {ref.path} is missing") from e
    with raw:
        source = _Digesting(raw)
        entries = _entries(source, ref)
        count = 0
        previous = b""
        for key, value in entries:
            if count and key <= previous:
                raise CorruptCheckpointError(f"savepoint file {ref.path} is not in key order")
            count += 1
            previous = key
            if start <= key < end:
                yield key, value
        while source.read(_CHUNK):
            pass
    if (source.size, source.digest.hexdigest()) != (ref.size, ref.checksum):
        raise CorruptCheckpointError(
            f"savepoint file {ref.path} is corrupted: expected {ref.size} bytes with xxh3 "
            f"{ref.checksum}, found {source.size} bytes with xxh3 {source.digest.hexdigest()}"
        )
    if count != expected:
        raise CorruptCheckpointError(
            f"savepoint file {ref.path} holds {count} entries, its handle says {expected}"
        )


def _entries(source: _Digesting, ref: dfs.FileRef) -> Iterator[tuple[bytes, bytes]]:
    """The `[key, value]` pairs after the header; `CorruptCheckpointError` if undecodable."""
    reader = zstandard.ZstdDecompressor().stream_reader(source, closefd=False)  # type: ignore[arg-type]
    unpacker = msgpack.Unpacker(reader, read_size=_CHUNK)
    try:
        header = next(unpacker, None)
        if header != _HEADER:
            raise ValueError(f"the header is {header!r:.100}, not {_HEADER}")
        for entry in unpacker:
            if not (
                isinstance(entry, list)
                and len(entry) == 2
                and all(isinstance(part, bytes) for part in entry)
            ):
                raise ValueError(f"an entry is not a [key, value] pair: {entry!r:.100}")
            yield entry[0], entry[1]
    except (ValueError, zstandard.ZstdError, msgpack.UnpackException) as e:
        raise CorruptCheckpointError(f"cannot decode savepoint file {ref.path}: {e}") from e
