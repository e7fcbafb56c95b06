"""Merging sorted runs of entries into one, the newest run winning on equal keys.

A run is a sequence of entries with strictly ascending keys. Runs are given newest first; for a key
present in several runs only the entry of the newest is kept. Tombstones (value None) are kept:
callers decide whether they may be dropped.

The merge works on batches (parallel key and value lists) rather than entry by entry, so that the
per-entry work happens in C: at each step, everything up to the smallest last key of the runs'
current batches can be emitted. When one run alone contributes, its slice is passed through; when
several do, their slices are combined in a dict (oldest first, so newer values overwrite older) and
the keys sorted, which timsort does in near-linear time on the concatenated sorted slices; when
one of two slices is much smaller, its few entries are inserted into a copy of the other.
"""

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from operator import itemgetter

from statebackend.lsm.table import Batch, Entry

# Entry iterators are read in batches that start small (a short scan reads little more than it
# yields) and double up to a size that amortizes the per-batch work.
_FIRST_BATCH = 16
_MAX_BATCH = 1024
# Two slices of which one has at most 1/_SPARSE of the other's entries are merged by inserting the
# few into a copy of the many (a deeper level's block with a few keys of the level above).
_SPARSE = 8


def merge_runs(runs: Sequence[Iterable[Entry]]) -> Iterator[Entry]:
    """The entries of `runs` (newest first) in ascending key order, newest entry per key.

    Lazy: it reads each run only a little ahead of what it has yielded.
    """
    if len(runs) == 1:
        yield from runs[0]
        return
    for keys, values in merge_batches([batches_of(run) for run in runs]):
        yield from zip(keys, values, strict=True)


def batches_of(
    entries: Iterable[Entry], first: int = _FIRST_BATCH, largest: int = _MAX_BATCH
) -> Iterator[Batch]:
    """`entries` as batches of `first` entries, then twice as many each time up to `largest`."""
    it = iter(entries)
    size = first
    while chunk := list(islice(it, size)):
        yield list(map(itemgetter(0), chunk)), list(map(itemgetter(1), chunk))
        size = min(largest, size * 2)


class _Cursor:
    """A run's current batch and the position of its first unconsumed entry."""

    __slots__ = ("batches", "keys", "values", "pos")

    def __init__(self, batches: Iterator[Batch]) -> None:
        self.batches = batches
        self.keys: list[bytes] = []
        self.values: list[bytes | None] = []
        self.pos = 0

    def advance(self) -> bool:
        """Moves to the next non-empty batch; False when the run is exhausted."""
        for keys, values in self.batches:
            if keys:
                self.keys, self.values, self.pos = keys, values, 0
                return True
        return False


def merge_batches(runs: Sequence[Iterable[Batch]]) -> Iterator[Batch]:
    """Like `merge_runs`, on runs of batches; yields non-empty batches.

    Yielded lists may be the input lists themselves: neither side mutates them afterwards.
    """
    cursors = [c for c in (_Cursor(iter(r)) for r in runs) if c.advance()]  # newest first
    while len(cursors) > 1:
        bound = min(c.keys[-1] for c in cursors)
        parts: list[Batch] = []
        live: list[_Cursor] = []
        for c in cursors:
            keys, values, pos = c.keys, c.values, c.pos
            if keys[pos] > bound:
                live.append(c)
                continue
            cut = bisect_right(keys, bound, pos)
            if pos == 0 and cut == len(keys):
                parts.append((keys, values))
            else:
                parts.append((keys[pos:cut], values[pos:cut]))
            if cut < len(keys):
                c.pos = cut
                live.append(c)
            elif c.advance():
                live.append(c)
        cursors = live
        if len(parts) == 1:
            yield parts[0]
            continue
        if len(parts) == 2 and min(len(parts[0][0]), len(parts[1][0])) * _SPARSE <= max(
            len(parts[0][0]), len(parts[1][0])
        ):
            yield _insert_sparse(parts[0], parts[1])
            continue
        combined: dict[bytes, bytes | None] = {}
        for keys, values in reversed(parts):  # oldest first: newer entries overwrite older ones
            combined.update(zip(keys, values, strict=True))
        merged = sorted(combined)
        yield merged, list(map(combined.__getitem__, merged))
    if cursors:
        c = cursors[0]
        yield (c.keys, c.values) if c.pos == 0 else (c.keys[c.pos :], c.values[c.pos :])
        while c.advance():
            yield c.keys, c.values


def _insert_sparse(newer: Batch, older: Batch) -> Batch:
    """Merges two sorted slices, one much smaller than the other; `newer` wins on equal keys."""
    few, many = (newer, older) if len(newer[0]) <= len(older[0]) else (older, newer)
    keys, values = list(many[0]), list(many[1])
    few_wins = few is newer
    pos = 0
    for key, value in zip(few[0], few[1], strict=True):
        pos = bisect_left(keys, key, pos)
        if pos < len(keys) and keys[pos] == key:
            if few_wins:
                values[pos] = value
        else:
            keys.insert(pos, key)
            values.insert(pos, value)
        pos += 1
    return keys, values
