"""A bounded source over an in-memory sequence.

Subtask i of p reads the items at positions i, i+p, i+2p... (its split,
`streamlet.connectors.splits`); its position is where its splits are, and a restore with another
parallelism moves the splits with their positions.

>>> from streamlet import Job
>>> from streamlet.connectors import CollectionSource, PrintSink
>>> job = Job("doc-collection")
>>> _ = job.source(CollectionSource([1, 2, 3])).map(lambda x: x * 10).sink(PrintSink())
>>> _ = job.execute({"checkpoint.dir": "memory://doc-collection"})
10
20
30
"""

from collections.abc import Sequence
from typing import Any

from streamlet.connectors.base import Source, SourceReader
from streamlet.connectors.splits import IndexSplits, Split, initial_splits, redistribute_splits
from streamlet.functions import RuntimeContext


class CollectionSource(Source):
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _CollectionReader(
            self.items, initial_splits(context.subtask_index, context.parallelism)
        )

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        return redistribute_splits(positions, parallelism)


class _CollectionReader(SourceReader):
    def __init__(self, items: list[Any], splits: list[Split]) -> None:
        self._items = items
        self._splits = IndexSplits(splits, len(items))

    async def open(self, position: Any | None) -> None:
        if position is not None:
            self._splits = IndexSplits(position, len(self._items))

    async def read_batch(self, max_records: int) -> list[Any]:
        indices = self._splits.take(max_records)
        if isinstance(indices, range):  # one split: a slice
            return self._items[indices.start : indices.stop : indices.step]
        return [self._items[index] for index in indices]

    @property
    def finished(self) -> bool:
        return self._splits.finished

    @property
    def has_input(self) -> bool:
        return not self._splits.finished

    def position(self) -> list[Split]:
        return self._splits.position()
