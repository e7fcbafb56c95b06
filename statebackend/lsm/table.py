"""Table files (SSTs): writing them (`TableBuilder`) and reading them (`TableReader`).

A table is an immutable sorted map of unique keys to values or tombstones, in one file:

    data block 0 .. data block n-1 | index block | filter block | properties block | footer

Every block is checksummed (see `block.py`), the footer too; the byte layout is documented in
docs/lsm-table-format.md. A reader verifies the footer, index, filter and properties when it opens
a table and every data block when it reads one: damage raises `CorruptTableError` naming the file
and the offset of the failing block, and is never turned into wrong data.

Point lookups are a bloom filter probe, a bisect over the index's last keys and a dict lookup in
the decoded block, which the `BlockCache` keeps as (keys, values, dict), never mutated. Lookups of
many keys (`reads.get_many`) use the same steps one by one (`block_of`, `cached_block`), reading
the blocks they miss together (`block_span` and `decode_block`, or `load_block`).

A builder's options (`TableOptions`) and the metadata it returns (`TableMeta`) are defined in
`meta.py`.
"""

import os
import posixpath
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import replace
from itertools import islice
from operator import itemgetter, lt
from typing import Any, BinaryIO, Protocol

from fsspec.implementations.local import LocalFileSystem

from statebackend.errors import StateError
from statebackend.lsm import block
from statebackend.lsm.bloom import BloomFilter, build_filter, filter_size, key_hash
from statebackend.lsm.meta import TableMeta, TableOptions
from statebackend.ttl import expiry_of, wrap

Entry = tuple[bytes, bytes | None]
Batch = tuple[list[bytes], list[bytes | None]]
"""Entries as two parallel lists: keys strictly ascending, values (None: tombstone)."""
CachedBlock = tuple[list[bytes], list[bytes | None], dict[bytes, bytes | None]]
"""A decoded data block as cached: keys and values (for scans) and a dict of them (for gets)."""

FOOTER_SIZE = block.FOOTER_SIZE
MIN_TAIL_READ = 64 * 1024  # the least that opening a table reads first (see tail_read_size)
# A scan's read-ahead after its first block missed in the cache (TableReader.scan).
SCAN_READAHEAD_MIN = 16 * 1024
SCAN_READAHEAD_MAX = 1024 * 1024
# Estimates of the meta blocks' bytes, for tail_read_size: msgpack framing of one index entry
# beyond its key, and the properties block beyond its two keys.
_INDEX_ENTRY_BYTES = 12
_PROPERTIES_BYTES = 1024
_BATCH = 1024  # entries per batch when streaming entries into a builder
_ENTRY_CHARGE = 160  # approximate memory of a cached entry beyond its bytes (objects, list, dict)
_MISSING = object()
_ABSENT: tuple[bool, None] = (False, None)


class CorruptTableError(StateError):
    """A table file whose bytes do not verify: names the file and the block offset that failed."""

    def __init__(self, table: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt table {table} at offset {offset}: {reason}")
        self.table = table
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled through __init__'s arguments (a worker process sends it back to its pool).
        return (type(self), (self.table, self.offset, self.reason))


class FileSource(Protocol):
    """Random access to one immutable file."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    # Optional: `remote() -> (file system, path) | None`, where a range is best read by a
    # request to an asynchronous file system (batched by `reads.get_many`); None: by `read`.


class FsFileSource:
    """A FileSource over fsspec range reads (on the local file system: os.pread, 4x faster)."""

    def __init__(self, fs: Any, path: str, size: int | None = None) -> None:
        self.fs = fs
        self.path = path
        self.size = int(fs.size(path)) if size is None else size
        self._local = type(fs) is LocalFileSystem and hasattr(os, "pread")

    def read(self, offset: int, length: int) -> bytes:
        if self._local:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        return self.fs.cat_file(self.path, start=offset, end=offset + length)

    def remote(self) -> tuple[Any, str] | None:
        """(file system, path) of the file when reads of its ranges are requests to an
        asynchronous file system (an object store), which `reads.get_many` batches into one
        `cat_ranges`; else None."""
        return None if self._local or not getattr(self.fs, "async_impl", False) else (
            self.fs, self.path
        )


class BlockCache(Protocol):
    """Decoded blocks by (table name, block offset); implemented by the DB layer."""

    def get(self, key: tuple[str, int]) -> object | None: ...

    def put(self, key: tuple[str, int], value: object, charge: int) -> None: ...


_EXPIRING_TAG = wrap(b"", 0)[0]  # the first byte of every envelope that has an expiry


def _min_expiry(values: list[bytes | None]) -> int | None:
    if _EXPIRING_TAG not in bytes(map(itemgetter(0), filter(None, values))):
        return None  # the common case, found in C: no value carries an expiry
    expiries = [e for e in map(expiry_of, filter(None, values)) if e is not None]
    return min(expiries) if expiries else None


def _byte_size(keys: list[bytes], values: list[bytes | None]) -> int:
    return sum(map(len, keys)) + sum(map(len, filter(None, values)))


def _check_types(keys: list[bytes], values: list[bytes | None]) -> None:
    if not set(map(type, keys)) <= {bytes}:
        raise TypeError("table keys must be bytes")
    if not set(map(type, values)) <= {bytes, type(None)}:
        raise TypeError("table values must be bytes or None")


class TableBuilder:
    """Writes one table to `sink`, entry by entry or in batches, in strictly ascending key order.

    Data blocks are written as they fill; `finish` writes the index, filter, properties and footer.
    `may_expire=False` promises that no value carries a TTL expiry (saves a scan of the values).
    Not thread-safe.
    """

    def __init__(
        self, sink: BinaryIO, options: TableOptions, creator: str, name: str,
        *, may_expire: bool = True,
    ) -> None:
        self._sink = sink
        self._options = options
        self._creator = creator
        self._name = name
        self._may_expire = may_expire
        self._encoder = block.BlockEncoder(options.compression, options.compression_level)
        self._block_size = options.block_size
        self._keys: list[bytes] = []  # the pending entries, not yet in a written block
        self._values: list[bytes | None] = []
        self._pending = 0  # key + value bytes of the pending entries
        self._last: bytes | None = None  # the last key added
        self._smallest: bytes | None = None
        self._index_keys: list[bytes] = []  # last key of each written data block
        self._index_offsets: list[int] = []
        self._offset = 0  # bytes written so far
        self._hashes: array[int] | None = array("Q") if options.bloom_bits_per_key else None
        self._entries = 0
        self._tombstones = 0
        self._key_bytes = 0
        self._value_bytes = 0
        self._min_expiry: int | None = None
        self._finished = False

    def add(self, key: bytes, value: bytes | None) -> None:
        """Adds one entry; `key` must be greater than every key added before (else ValueError)."""
        last = self._last
        if last is not None and not key > last:
            raise ValueError(f"table {self._name}: key {key!r:.60} added after {last!r:.60}")
        if self._finished:
            raise ValueError(f"table {self._name} is finished")
        if type(key) is not bytes or (value is not None and type(value) is not bytes):
            raise TypeError("table keys must be bytes and values bytes or None")
        self._keys.append(key)
        self._values.append(value)
        self._last = key
        self._key_bytes += len(key)
        if value is None:
            self._pending += len(key)
        else:
            self._value_bytes += len(value)
            self._pending += len(key) + len(value)
        if self._pending >= self._block_size:
            self._write_block(self._keys, self._values)
            self._keys, self._values, self._pending = [], [], 0

    def add_batch(
        self, keys: list[bytes], values: list[bytes | None], limit: int | None = None,
        *, verify: bool = True,
    ) -> int:
        """Adds entries `keys[i], values[i]` in order; keys strictly ascending (else ValueError).

        With `limit`, stops at the first data-block boundary at which the file has reached `limit`
        bytes (adding nothing if it already has) and returns how many entries were added: the
        caller starts a new table with the rest. Without it, adds all and returns len(keys).
        `verify=False` skips the order and type checks, for callers whose keys are sorted by
        construction (compaction merging verified tables). The lists are not mutated.
        """
        n = len(keys)
        if n != len(values):
            raise ValueError(f"{n} keys but {len(values)} values")
        if self._finished:
            raise ValueError(f"table {self._name} is finished")
        if not n or (limit is not None and self._offset >= limit and not self._keys):
            return 0
        if verify:
            _check_types(keys, values)
            last = self._last
            if (last is not None and not keys[0] > last) or not all(
                map(lt, keys, islice(keys, 1, None))
            ):
                raise ValueError(f"table {self._name}: keys of a batch are not strictly ascending")
        self._last = keys[-1]
        if self._keys:
            pending_keys, pending_values = self._keys + keys, self._values + values
        else:
            pending_keys, pending_values = keys, values
        key_bytes, value_bytes = sum(map(len, keys)), sum(map(len, filter(None, values)))
        self._key_bytes += key_bytes
        self._value_bytes += value_bytes
        self._pending += key_bytes + value_bytes
        if self._pending < self._block_size:
            self._keys, self._values = pending_keys, pending_values
            return n
        # Cut the pending entries into blocks of equal entry counts close to block_size bytes.
        total = len(pending_keys)
        blocks = max(1, round(self._pending / self._block_size))
        step = -(-total // blocks)
        self._keys, self._values, self._pending = [], [], 0
        for i in range(0, total, step):
            self._write_block(pending_keys[i : i + step], pending_values[i : i + step])
            written = i + step
            if limit is not None and self._offset >= limit and written < total:
                # Unwritten entries added before this batch stay pending; the batch's go back.
                old = max(0, total - n - written)
                self._keys = pending_keys[written : written + old]
                self._values = pending_values[written : written + old]
                self._pending = _byte_size(self._keys, self._values)
                self._last = pending_keys[written + old - 1]
                added = max(0, written - (total - n))
                self._key_bytes -= sum(map(len, keys[added:]))
                self._value_bytes -= sum(map(len, filter(None, values[added:])))
                return added
        return n

    def estimated_size(self) -> int:
        """Bytes written so far plus the pending entries (uncompressed)."""
        return self._offset + self._pending

    def _write_block(self, keys: list[bytes], values: list[bytes | None]) -> None:
        data = block.encode_entries(self._encoder, keys, values)
        self._sink.write(data)
        self._index_keys.append(keys[-1])
        self._index_offsets.append(self._offset)
        self._offset += len(data)
        if self._smallest is None:
            self._smallest = keys[0]
        self._entries += len(keys)
        self._tombstones += values.count(None)
        if self._may_expire:
            expiry = _min_expiry(values)
            if expiry is not None and (self._min_expiry is None or expiry < self._min_expiry):
                self._min_expiry = expiry
        if self._hashes is not None:
            self._hashes.extend(map(key_hash, keys))

    def finish(self) -> TableMeta:
        """Writes the pending block, index, filter, properties and footer; returns the metadata.

        An empty table cannot be written (ValueError): callers write no file instead.
        """
        if self._finished:
            raise ValueError(f"table {self._name} is finished")
        if self._keys:
            self._write_block(self._keys, self._values)
            self._keys, self._values, self._pending = [], [], 0
        if not self._entries:
            raise ValueError(f"table {self._name} has no entries")
        self._finished = True
        assert self._smallest is not None and self._last is not None
        encoder = self._encoder
        index = encoder.encode(block.pack([self._index_keys, self._index_offsets]))
        bits_per_key = self._options.bloom_bits_per_key
        bloom = b""
        if self._hashes is not None:
            bloom = encoder.encode(
                build_filter(self._hashes, self._entries, bits_per_key), compress=False
            )
        meta = TableMeta(
            self._name, 0, self._smallest, self._last, self._entries, self._tombstones,
            self._min_expiry, self._creator
        )
        properties = {k: v for k, v in meta.to_dict().items() if k not in ("name", "size")}
        properties |= {
            "data_blocks": len(self._index_keys),
            "key_bytes": self._key_bytes,
            "value_bytes": self._value_bytes,
            "block_size": self._block_size,
            "compression": self._options.compression,
            "bloom_bits_per_key": bits_per_key,
        }
        props = encoder.encode(block.pack(properties))
        index_offset = self._offset
        filter_offset = index_offset + len(index)
        props_offset = filter_offset + len(bloom)
        footer = block.encode_footer(
            (index_offset, len(index), filter_offset, len(bloom), props_offset, len(props))
        )
        self._sink.write(b"".join((index, bloom, props, footer)))
        self._offset = props_offset + len(props) + len(footer)
        return replace(meta, size=self._offset)


def write_table(
    fs: Any, path: str, name: str, entries: Iterable[Entry], options: TableOptions, creator: str
) -> TableMeta:
    """Writes `entries` (strictly ascending keys) as the table file `path`; removes it on error."""
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    try:
        with fs.open(path, "wb") as sink:
            builder = TableBuilder(sink, options, creator, name)
            it = iter(entries)
            while chunk := list(islice(it, _BATCH)):
                builder.add_batch(
                    list(map(itemgetter(0), chunk)), list(map(itemgetter(1), chunk))
                )
            meta = builder.finish()
    except BaseException:
        remove_quietly(fs, path)
        raise
    return meta


def remove_quietly(fs: Any, path: str) -> None:
    """Removes `path` if it exists, ignoring errors (used while handling another error)."""
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception:  # noqa: BLE001 - best effort: the original error matters more
        pass


def tail_read_size(meta: TableMeta, options: TableOptions) -> int:
    """How many bytes at the end of the table `meta` describes opening reads first: its footer
    and meta blocks, estimated from its entries, size and keys under `options` (those of the
    reader: a table written with other options may need a second read, never gives a wrong
    answer), with a margin; at least MIN_TAIL_READ, at most the whole file."""
    bits = options.bloom_bits_per_key
    bloom = filter_size(meta.entries, bits) if bits else 0
    blocks = -(-meta.size // options.block_size)
    index = blocks * (len(meta.largest) + _INDEX_ENTRY_BYTES)
    properties = _PROPERTIES_BYTES + len(meta.smallest) + len(meta.largest)
    estimate = (bloom + index + properties + 3 * block.TRAILER_SIZE + FOOTER_SIZE) * 5 // 4
    return min(meta.size, max(MIN_TAIL_READ, estimate))


class TableReader:
    """Reads one table. Opening it reads and verifies the footer, index, filter and properties:
    it reads the last `tail` bytes first (`tail_read_size`), and the meta blocks again only when
    they start before them.

    Thread-safe for concurrent readers (its own state is immutable after `__init__`).
    """

    def __init__(
        self,
        source: FileSource,
        name: str,
        cache: BlockCache | None = None,
        tail: int = MIN_TAIL_READ,
    ) -> None:
        self._source = source
        self.name = name
        self._cache = cache
        size = source.size
        if size < FOOTER_SIZE:
            raise CorruptTableError(
                name, 0, f"truncated: {size} bytes is less than a {FOOTER_SIZE}-byte footer"
            )
        tail_offset = max(0, size - max(tail, FOOTER_SIZE))
        tail = memoryview(self._read(tail_offset, size - tail_offset))
        footer_offset = size - FOOTER_SIZE
        handles = self._verified(
            lambda footer: block.decode_footer(footer, footer_offset),
            tail[-FOOTER_SIZE:],
            footer_offset,
        )
        index_offset = handles[0]
        if index_offset >= tail_offset:
            meta, base = tail, tail_offset
        else:
            meta, base = memoryview(self._read(index_offset, size - index_offset)), index_offset

        def meta_block(decoder: Callable[[memoryview], Any], offset: int, length: int) -> Any:
            return self._verified(decoder, meta[offset - base : offset - base + length], offset)

        index = meta_block(block.decode_object, index_offset, handles[1])
        self._parse_index(index, index_offset)
        self._may_contain: Callable[[bytes], bool] | None = None
        if handles[3]:
            filter_data = meta_block(block.decode, handles[2], handles[3])
            self._may_contain = self._verified(BloomFilter, filter_data, handles[2]).may_contain
        self.properties: dict[str, Any] = meta_block(block.decode_object, handles[4], handles[5])
        self.meta = self._parse_properties(self.properties, handles[4], size)

    def _verified(self, decoder: Callable[[Any], Any], data: Any, offset: int) -> Any:
        """`decoder(data)`, its ValueError turned into a CorruptTableError at `offset`."""
        try:
            return decoder(data)
        except ValueError as e:
            raise CorruptTableError(self.name, offset, str(e)) from e

    def _read(self, offset: int, length: int) -> bytes:
        data = self._source.read(offset, length)
        if len(data) != length:
            raise CorruptTableError(
                self.name,
                offset,
                f"truncated: read {len(data)} of {length} bytes (the file should have "
                f"{self._source.size} bytes)",
            )
        return data

    def _parse_index(self, index: Any, offset: int) -> None:
        if not (
            type(index) is list
            and len(index) == 2
            and type(index[0]) is list
            and type(index[1]) is list
            and len(index[0]) == len(index[1]) >= 1
            and set(map(type, index[0])) == {bytes}
            and set(map(type, index[1])) == {int}
            and index[1][0] == 0
            and all(map(lt, index[1], islice(index[1], 1, None)))
            and index[1][-1] + block.TRAILER_SIZE <= offset
            and all(map(lt, index[0], islice(index[0], 1, None)))
        ):
            raise CorruptTableError(self.name, offset, "malformed index block")
        self._last_keys: list[bytes] = index[0]  # last key of each data block, ascending
        self._offsets: list[int] = index[1]
        self._ends: list[int] = index[1][1:] + [offset]
        self._num_blocks = len(self._last_keys)

    def _parse_properties(self, props: Any, offset: int, size: int) -> TableMeta:
        try:
            if type(props) is not dict:
                raise ValueError("not a map")
            meta = TableMeta.from_dict(
                {
                    "name": self.name,
                    "size": size,
                    **{k: props.get(k) for k in TableMeta.__dataclass_fields__ if k in props},
                }
            )
            if props.get("data_blocks") != self._num_blocks:
                raise ValueError(f"data_blocks differs from the index's {self._num_blocks}")
            if meta.largest != self._last_keys[-1] or not meta.smallest <= meta.largest:
                raise ValueError("key range does not match the index")
            if not 0 <= meta.tombstones <= meta.entries or meta.entries < self._num_blocks:
                raise ValueError(f"{meta.entries} entries, {meta.tombstones} tombstones")
        except ValueError as e:
            raise CorruptTableError(self.name, offset, f"properties block: {e}") from e
        return meta

    def _entries(self, i: int, content: bytes) -> Batch:
        offset = self._offsets[i]
        keys, values = self._verified(block.entries_of, content, offset)
        if keys[-1] != self._last_keys[i]:
            raise CorruptTableError(self.name, offset, "last key of block differs from the index")
        return keys, values

    def _block(self, i: int) -> CachedBlock:
        """Data block `i`, from the cache or loaded."""
        cached = self._cache.get((self.name, self._offsets[i])) if self._cache else None
        return cached if cached is not None else self._load(i)  # type: ignore[return-value]

    def _load(self, i: int) -> CachedBlock:
        """Data block `i`, read, verified, decoded and put in the cache."""
        offset = self._offsets[i]
        return self._decoded(i, self._read(offset, self._ends[i] - offset))

    def _decoded(self, i: int, data: bytes) -> CachedBlock:
        """Data block `i` from its bytes, verified, decoded and put in the cache."""
        offset = self._offsets[i]
        keys, values = self._entries(i, self._verified(block.decode, data, offset))
        decoded = keys, values, dict(zip(keys, values, strict=True))
        if self._cache is not None:
            charge = _byte_size(keys, values) + _ENTRY_CHARGE * len(keys)
            self._cache.put((self.name, offset), decoded, charge)
        return decoded

    def get(self, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) when the table has `key` (value None: a tombstone), else (False, None)."""
        may_contain = self._may_contain
        if may_contain is not None and not may_contain(key):
            return _ABSENT
        i = bisect_left(self._last_keys, key)
        if i == self._num_blocks:
            return _ABSENT
        cache = self._cache  # inlined `_block`: this is the hottest path of the engine
        cached = cache.get((self.name, self._offsets[i])) if cache is not None else None
        lookup = (cached if cached is not None else self._load(i))[2]  # type: ignore[index]
        value = lookup.get(key, _MISSING)
        return _ABSENT if value is _MISSING else (True, value)

    def block_of(self, key: bytes) -> int | None:
        """The data block a lookup of `key` reads, or None when the table cannot hold `key`
        (its bloom filter says so, or `key` is beyond its last key). For lookups of many keys
        at once (`reads.get_many`), which load the blocks they miss concurrently."""
        may_contain = self._may_contain
        if may_contain is not None and not may_contain(key):
            return None
        i = bisect_left(self._last_keys, key)
        return None if i == self._num_blocks else i

    def cached_block(self, i: int) -> CachedBlock | None:
        """Data block `i` if the block cache holds it (a hit), else None."""
        if self._cache is None:
            return None
        return self._cache.get((self.name, self._offsets[i]))  # type: ignore[return-value]

    def load_block(self, i: int) -> CachedBlock:
        """Data block `i`, read from the file, verified, decoded and put in the block cache."""
        return self._load(i)

    @property
    def source(self) -> FileSource:
        return self._source

    def block_span(self, i: int) -> tuple[int, int]:
        """(offset, length) of data block `i` in the file."""
        return self._offsets[i], self._ends[i] - self._offsets[i]

    def decode_block(self, i: int, data: bytes) -> CachedBlock:
        """Data block `i` from its bytes (read elsewhere: `block_span`), verified, decoded and
        put in the block cache."""
        offset, length = self.block_span(i)
        if len(data) != length:
            raise CorruptTableError(
                self.name, offset, f"truncated: read {len(data)} of {length} bytes"
            )
        return self._decoded(i, data)

    def scan(self, start: bytes | None = None, end: bytes | None = None) -> Iterator[Entry]:
        """Entries with start <= key < end in ascending order, tombstones included.

        Blocks come from the block cache; those it misses are read with a growing read-ahead,
        as RocksDB's iterators do: the first alone, each further miss of the scan reads the
        blocks that follow it too, twice as many bytes as the one before, from
        SCAN_READAHEAD_MIN up to SCAN_READAHEAD_MAX (a long scan of a table on an object store
        costs a request per megabyte, not per block; a short one reads no more than it did).
        Every block read is verified, decoded and cached as a point lookup's is."""
        last_keys = self._last_keys
        i = 0 if start is None else bisect_left(last_keys, start)
        stop = self._num_blocks
        if end is not None:
            stop = min(stop, bisect_left(last_keys, end) + 1)
        ahead: dict[int, bytes] = {}  # raw bytes of blocks read ahead, not decoded yet
        readahead = 0  # bytes of the next read beyond one block: 0 until a block was missed
        while i < stop:
            cached = self.cached_block(i) if i not in ahead else None
            if cached is None:
                if i not in ahead:
                    ahead = self._read_ahead(i, stop, readahead)
                    readahead = min(max(2 * readahead, SCAN_READAHEAD_MIN), SCAN_READAHEAD_MAX)
                cached = self._decoded(i, ahead.pop(i))
            keys, values, _ = cached
            lo = 0 if start is None else bisect_left(keys, start)
            if end is not None and last_keys[i] >= end:
                hi = bisect_left(keys, end)
                yield from zip(keys[lo:hi], values[lo:hi], strict=True)
                return
            if lo:
                keys, values = keys[lo:], values[lo:]
            yield from zip(keys, values, strict=True)
            start = None
            i += 1

    def _read_ahead(self, i: int, stop: int, readahead: int) -> dict[int, bytes]:
        """The raw bytes of block `i` and of the blocks after it (before `stop`) that end within
        `readahead` bytes of its start, read at once."""
        offsets, ends = self._offsets, self._ends
        j = i + 1
        while j < stop and ends[j] - offsets[i] <= readahead:
            j += 1
        first = offsets[i]
        chunk = self._read(first, ends[j - 1] - first)
        return {b: chunk[offsets[b] - first : ends[b] - first] for b in range(i, j)}

    def iter_batches(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        readahead: int = 1 << 20,
        prefetch: Executor | None = None,
    ) -> Iterator[Batch]:
        """The entries with start <= key < end, one non-empty batch per data block, for bulk reads.

        Reads `readahead` bytes of consecutive blocks at a time and bypasses the block cache.
        With `prefetch`, the next read (with its checksums and decompression, which release the
        GIL) runs on that executor while the caller works on the current one. The caller owns the
        yielded lists.
        """
        last_keys = self._last_keys
        i = 0 if start is None else bisect_left(last_keys, start)
        stop = self._num_blocks
        if end is not None:
            stop = min(stop, bisect_left(last_keys, end) + 1)
        spans = []  # block ranges [i, j) read at once
        while i < stop:
            j = i + 1
            while j < stop and self._ends[j] - self._offsets[i] <= readahead:
                j += 1
            spans.append((i, j))
            i = j
        pending = prefetch.submit(self._contents, *spans[0]) if prefetch and spans else None
        for n, (i, j) in enumerate(spans):
            if pending is not None and prefetch is not None:
                contents = pending.result()
                more = n + 1 < len(spans)
                pending = prefetch.submit(self._contents, *spans[n + 1]) if more else None
            else:
                contents = self._contents(i, j)
            for b, content in zip(range(i, j), contents, strict=True):
                keys, values = self._entries(b, content)
                lo = 0 if start is None else bisect_left(keys, start)
                hi = len(keys) if end is None or last_keys[b] < end else bisect_left(keys, end)
                if lo or hi < len(keys):
                    keys, values = keys[lo:hi], values[lo:hi]
                if keys:
                    yield keys, values
                start = None

    def _contents(self, i: int, j: int) -> list[bytes]:
        """The verified, decompressed contents of data blocks [i, j), read at once."""
        offsets, ends = self._offsets, self._ends
        first = offsets[i]
        chunk = memoryview(self._read(first, ends[j - 1] - first))
        return [
            self._verified(block.decode, chunk[offsets[b] - first : ends[b] - first], offsets[b])
            for b in range(i, j)
        ]
