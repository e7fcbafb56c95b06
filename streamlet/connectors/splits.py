"""Index splits: how `DataGeneratorSource` and `CollectionSource` share record indices among their
subtasks, and move them when a restore changes the parallelism.

A split is the arithmetic progression of record indices `next, next + stride, next + 2 * stride,
...` (below the source's end, if it has one). A fresh subtask i of p reads one split, `[i, p]`. A
reader takes the indices of its splits merged in ascending order (so its records keep the order of
their indices, as generated event times usually do), and its position is the list of its splits
`[[next, stride], ...]`. A restore with another parallelism moves whole splits with their
positions: the old subtasks' splits, in order, go round-robin to the new subtasks. Scaling up
beyond the number of splits leaves the extra subtasks without input (idle, as a Kafka subtask
without partitions).

>>> splits = IndexSplits([[0, 4], [1, 2]], end=9)
>>> splits.take(5), splits.position()
([0, 1, 3, 4, 5], [[8, 4], [7, 2]])
>>> redistribute_splits([[[8, 4]], [[7, 2], [2, 4]]], 2)
[[[8, 4], [2, 4]], [[7, 2]]]
"""

import heapq
from collections.abc import Sequence
from typing import Any

from streamlet.errors import CheckpointError

Split = list[int]
"""`[next index, stride]`."""


def initial_splits(index: int, parallelism: int) -> list[Split]:
    """The split of subtask `index` of `parallelism` on a fresh start."""
    return [[index, parallelism]]


def redistribute_splits(positions: list[Any], parallelism: int) -> list[list[Split]]:
    """The positions of `parallelism` readers from the old readers' positions."""
    splits = [_split(split) for position in positions for split in _splits(position)]
    return [splits[index::parallelism] for index in range(parallelism)]


def _splits(position: Any) -> list[Any]:
    if not isinstance(position, list):
        raise CheckpointError(f"not a list of index splits: {position!r:.100}")
    return position


def _split(split: Any) -> Split:
    if (
        not isinstance(split, list)
        or len(split) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in split)
        or split[0] < 0
        or split[1] < 1
    ):
        raise CheckpointError(f"not an index split [next, stride]: {split!r:.100}")
    return [split[0], split[1]]


class IndexSplits:
    """The splits of one reader, below `end` (None: unbounded)."""

    def __init__(self, splits: list[Split], end: int | None) -> None:
        self._splits = [list(split) for split in splits]
        self._end = end

    @property
    def share(self) -> float:
        """The fraction of all indices these splits hold."""
        return sum(1 / stride for _, stride in self._splits)

    @property
    def finished(self) -> bool:
        return self._end is not None and all(next_ >= self._end for next_, _ in self._splits)

    def take(self, count: int) -> Sequence[int]:
        """Up to `count` next indices, in ascending order (a `range` for a single split, so that
        a reader of a sequence can slice it)."""
        end = self._end
        if len(self._splits) == 1:  # the common case, without a merge
            split = self._splits[0]
            stop = split[0] + count * split[1]
            indices = range(split[0], stop if end is None else min(stop, end), split[1])
            split[0] += len(indices) * split[1]
            return indices
        heap = [(s[0], i) for i, s in enumerate(self._splits) if end is None or s[0] < end]
        heapq.heapify(heap)
        indices = []
        while heap and len(indices) < count:
            index, i = heap[0]
            indices.append(index)
            split = self._splits[i]
            split[0] = index + split[1]
            if end is None or split[0] < end:
                heapq.heapreplace(heap, (split[0], i))
            else:
                heapq.heappop(heap)
        return indices

    def position(self) -> list[Split]:
        return [list(split) for split in self._splits]
