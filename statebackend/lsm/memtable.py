"""The memtable: the mutable, in-memory newest part of an LSM database.

A memtable is a dict from key to value (None is a tombstone) plus a lazily sorted key order. A write
is O(1): it sets the dict entry and, for a key the memtable has not seen, appends it to a list of
new keys. A range read sorts only the new keys, merging them into the sorted run when they become
numerous, so a scan between writes costs O(log n + new keys), not a sort of the whole memtable.
Keys are never removed (a delete stores a tombstone), so `sorted run + new keys` is the key set.
`size` counts the live entries only: an overwrite replaces the bytes of the value it replaces, so
updating a few keys many times does not fill the memtable.

A memtable is written by one thread (the DB's writer). Once it is frozen (moved to the immutable
list) nobody writes it again. `range` reorganizes the key order, so it holds the memtable's lock:
the flush thread and readers may call it concurrently on a frozen memtable.
"""

import threading
from bisect import bisect_left
from heapq import merge

# A rough per-entry overhead, so that many tiny entries still fill a memtable.
ENTRY_OVERHEAD = 32
# New keys are merged into the sorted run once they exceed 1/MERGE_FRACTION of it.
MERGE_FRACTION = 16

Entry = tuple[bytes, bytes | None]
_ABSENT = object()


class Memtable:
    __slots__ = ("data", "size", "_sorted", "_new", "_lock")

    def __init__(self) -> None:
        self.data: dict[bytes, bytes | None] = {}
        self.size = 0  # approximate bytes: keys + values + ENTRY_OVERHEAD per entry
        # Invariant: set(_sorted) | set(_new) == set(data), disjoint; _sorted is ascending.
        self._sorted: list[bytes] = []
        self._new: list[bytes] = []
        self._lock = threading.Lock()  # guards _sorted and _new against concurrent range() calls

    def put(self, key: bytes, value: bytes | None) -> None:
        data = self.data
        old = data.get(key, _ABSENT)
        data[key] = value
        added = len(value) if value is not None else 0
        if old is _ABSENT:
            self._new.append(key)
            self.size += len(key) + ENTRY_OVERHEAD + added
        else:  # an overwrite: the replaced value's bytes are gone
            self.size += added - (len(old) if old is not None else 0)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.data)

    def range(self, start: bytes | None, end: bytes | None) -> list[Entry]:
        """A copy of the entries with start <= key < end, ascending, tombstones included.

        The copy makes a scan point-in-time consistent while later writes continue.
        """
        data = self.data
        return [(k, data[k]) for k in self._keys(start, end)]

    def batch(self) -> tuple[list[bytes], list[bytes | None]]:
        """All keys ascending and their values (tombstones as None), for a flush."""
        keys = self._keys(None, None)
        return keys, list(map(self.data.__getitem__, keys))

    def _keys(self, start: bytes | None, end: bytes | None) -> list[bytes]:
        with self._lock:
            new = self._new
            if new:
                new.sort()
                if len(new) * MERGE_FRACTION > len(self._sorted):
                    merged = self._sorted + new
                    merged.sort()  # two ascending runs: timsort merges them in linear time
                    self._sorted = merged
                    self._new = new = []
            keys = _slice(self._sorted, start, end)
            if new:
                keys = list(merge(keys, _slice(new, start, end)))
        return keys


def _slice(keys: list[bytes], start: bytes | None, end: bytes | None) -> list[bytes]:
    lo = 0 if start is None else bisect_left(keys, start)
    hi = len(keys) if end is None else bisect_left(keys, end, lo)
    return keys[lo:hi]
