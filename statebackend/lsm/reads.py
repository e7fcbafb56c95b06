"""Reading a version's tables: point lookups and the sorted runs of a scan.

Every reference is read only within its effective range (`TableMeta.lo`/`hi`: its file's keys
inside its clip, docs/lsm-protocol.md "Table references"), and through a `TableCache`, which
reads tables of other roots too. The DB reads its live versions here (after its memtables), and
`export` reads a pinned version of a DB it does not open. A point lookup that finds a table not
open yet opens every table the key may be in at once (`TableCache.open_all`), so that the first
lookups after a restore wait for the round trips of one table, not of each in turn.

`get_many` looks many keys up at once, for a batch of records whose state is read ahead: the
tables and the data blocks the keys need that are not cached are read concurrently (the ranges on
an object store in one batched call, others on threads: `files.each`),
in rounds (a key not found in the blocks of one round goes on to its next table in the next), so
the lookups of a batch wait for about as many round trips as the deepest single lookup.
"""

from bisect import bisect_right
from collections.abc import Callable, Iterator
from functools import partial
from itertools import chain
from typing import Any

from statebackend.lsm import files
from statebackend.lsm.cache import TableCache
from statebackend.lsm.merge import merge_runs
from statebackend.lsm.meta import TableMeta
from statebackend.lsm.table import CachedBlock, Entry, TableReader
from statebackend.lsm.version import Version

ABSENT: tuple[bool, None] = (False, None)
# Coalescing the block reads of `get_many` on an object store (`coalesce`).
COALESCE_GAP_BYTES = 64 << 10
COALESCE_MAX_BYTES = 2 << 20
_MISSING = object()


def get(version: Version, key: bytes, tables: TableCache) -> tuple[bool, bytes | None]:
    """(True, value) when a table of `version` has `key` (value None: a tombstone), newest
    first; else (False, None)."""
    readers = tables.readers
    for t in version.levels[0]:
        if t.lo <= key < t.hi:
            found, value = (readers.get(t.key) or _open(version, key, t, tables)).get(key)
            if found:
                return found, value
    for run, ends in version.runs:  # one sorted run per level >= 1: bisect to one reference
        i = bisect_right(ends, key)
        if i < len(run):
            t = run[i]
            if t.lo <= key:
                found, value = (readers.get(t.key) or _open(version, key, t, tables)).get(key)
                if found:
                    return found, value
    return ABSENT


def get_many(
    version: Version, keys: list[bytes], tables: TableCache
) -> dict[bytes, bytes | None]:
    """What `get` finds for each of `keys` (each key: its value, None for a tombstone or no
    entry), the tables and data blocks not cached read concurrently. An error reading a table
    or a block raises (once every read of its round has returned)."""
    candidates = {key: list(_candidates(version, key)) for key in keys}
    closed = {t.key: t for ts in candidates.values() for t in ts if t.key not in tables.readers}
    if closed:
        tables.open_all(list(closed.values()))
    found: dict[bytes, bytes | None] = {}
    loaded: dict[tuple[str, int], CachedBlock] = {}  # blocks read here, whatever the cache keeps
    position = dict.fromkeys(candidates, 0)  # the next candidate table of each key
    while candidates:
        missing: dict[tuple[str, int], tuple[TableReader, int]] = {}
        for key, ts in list(candidates.items()):
            n = position[key]
            while n < len(ts):
                reader = tables.reader(ts[n])
                i = reader.block_of(key)
                if i is not None:
                    block = loaded.get((reader.name, i)) or reader.cached_block(i)
                    if block is None:
                        missing[reader.name, i] = (reader, i)
                        break
                    value = block[2].get(key, _MISSING)
                    if value is not _MISSING:
                        found[key] = value  # type: ignore[assignment]
                        break
                n += 1
            position[key] = n
            if key in found or n == len(ts):
                found.setdefault(key, None)
                del candidates[key]
        if missing:
            loaded.update(zip(missing, _load_blocks(list(missing.values())), strict=True))
    return found


def _load_blocks(wanted: list[tuple[TableReader, int]]) -> list[CachedBlock]:
    """The data blocks `wanted` (reader, block), read concurrently: the ranges of files on an
    asynchronous file system (an object store's) in one `cat_ranges` per file system, whose
    requests run concurrently on its own event loop (no thread each); the others on threads."""
    blocks: list[CachedBlock | None] = [None] * len(wanted)
    remote: dict[int, tuple[Any, list[tuple[int, str]]]] = {}  # by file system: (n, path)
    calls: list[Callable[[], None]] = []
    for n, (reader, _) in enumerate(wanted):
        location = reader.source.remote() if hasattr(reader.source, "remote") else None
        if location is None:
            calls.append(partial(_load_one, wanted, blocks, n))
        else:
            remote.setdefault(id(location[0]), (location[0], []))[1].append((n, location[1]))
    calls += [partial(_load_ranges, wanted, blocks, fs, items) for fs, items in remote.values()]
    files.each(lambda call: call(), calls)
    return blocks  # type: ignore[return-value]


def _load_one(
    wanted: list[tuple[TableReader, int]], blocks: list[CachedBlock | None], n: int
) -> None:
    reader, i = wanted[n]
    blocks[n] = reader.load_block(i)


def _load_ranges(
    wanted: list[tuple[TableReader, int]],
    blocks: list[CachedBlock | None],
    fs: Any,
    items: list[tuple[int, str]],
) -> None:
    """The blocks `items` (wanted[n], in file `path`) of one file system, in one `cat_ranges`
    of their coalesced spans (`coalesce`)."""
    spans = {n: wanted[n][0].block_span(wanted[n][1]) for n, _ in items}
    by_path: dict[str, list[int]] = {}
    for n, path in items:
        by_path.setdefault(path, []).append(n)
    requests = [
        (path, start, members)
        for path, ns in by_path.items()
        for start, members in coalesce([(spans[n][0], spans[n][1], n) for n in ns])
    ]
    contents = fs.cat_ranges(
        [path for path, _, _ in requests],
        [start for _, start, _ in requests],
        [start + _span_length(spans, members) for _, start, members in requests],
        on_error="return",
    )
    for (_, start, members), data in zip(requests, contents, strict=True):
        for n in members:
            reader, i = wanted[n]
            offset, length = spans[n]
            if isinstance(data, BaseException):  # read it again on its own, which raises why
                blocks[n] = reader.load_block(i)
            else:
                blocks[n] = reader.decode_block(i, data[offset - start : offset - start + length])


def coalesce(spans: list[tuple[int, int, int]]) -> list[tuple[int, list[int]]]:
    """Byte ranges of one file (offset, length, id) merged into fewer requests: a range joins the
    one before it when the gap between them is at most COALESCE_GAP_BYTES and the merged request
    stays within COALESCE_MAX_BYTES. On an object store a request costs a round trip (and the
    client's CPU to sign and parse it) that reading a gap of this size does not, so the blocks a
    batch of keys needs in one table are read in few requests. Returns (start, ids) per request,
    ascending; a request ends where its last range does."""
    merged: list[tuple[int, int, list[int]]] = []  # (start, end, ids)
    for offset, length, n in sorted(spans):
        if merged:
            start, end, ids = merged[-1]
            if offset - end <= COALESCE_GAP_BYTES and offset + length - start <= COALESCE_MAX_BYTES:
                merged[-1] = (start, max(end, offset + length), [*ids, n])
                continue
        merged.append((offset, offset + length, [n]))
    return [(start, ids) for start, _, ids in merged]


def _span_length(spans: dict[int, tuple[int, int]], members: list[int]) -> int:
    start = spans[members[0]][0]
    return max(offset + length for offset, length in (spans[n] for n in members)) - start


def _open(version: Version, key: bytes, t: TableMeta, tables: TableCache) -> TableReader:
    """The reader of `t`, opened together with every other table a lookup of `key` in `version`
    may read that is not open yet: concurrently, so that the first lookups after a restore wait
    for the round trips of one table, not of each table in turn."""
    others = {c.key: c for c in _candidates(version, key) if c.key not in tables.readers}
    others.pop(t.key, None)
    tables.open_all([t, *others.values()])
    return tables.readers.get(t.key) or tables.open(t)  # not open: opening again raises why


def _candidates(version: Version, key: bytes) -> Iterator[TableMeta]:
    """The references a lookup of `key` in `version` may read: the level-0 ones holding it and
    the one of each deeper level."""
    for t in version.levels[0]:
        if t.lo <= key < t.hi:
            yield t
    for run, ends in version.runs:
        i = bisect_right(ends, key)
        if i < len(run) and run[i].lo <= key:
            yield run[i]


def runs(
    version: Version, start: bytes | None, end: bytes | None, tables: TableCache
) -> list[Iterator[Entry]]:
    """The sorted runs of `version` for a scan of [start, end), newest first, tombstones kept:
    one per level-0 reference, one per deeper level (its references read one after another)."""
    found: list[Iterator[Entry]] = [
        _scan(t, start, end, tables) for t in version.levels[0] if _overlaps(t, start, end)
    ]
    for level in version.levels[1:]:
        refs = [t for t in level if _overlaps(t, start, end)]
        if refs:
            found.append(chain.from_iterable(_scan(t, start, end, tables) for t in refs))
    return found


def entries(
    version: Version, start: bytes | None, end: bytes | None, tables: TableCache
) -> Iterator[tuple[bytes, bytes]]:
    """The live entries of `version` with start <= key < end, ascending."""
    for key, value in merge_runs(runs(version, start, end, tables)):
        if value is not None:
            yield key, value


def _overlaps(t: TableMeta, start: bytes | None, end: bytes | None) -> bool:
    return (start is None or t.hi > start) and (end is None or t.lo < end)


def _scan(t: TableMeta, start: bytes | None, end: bytes | None, tables: TableCache) -> Iterator:
    lo = t.lo if start is None or start < t.lo else start
    hi = t.hi if end is None or end > t.hi else end
    return tables.reader(t).scan(lo, hi)
