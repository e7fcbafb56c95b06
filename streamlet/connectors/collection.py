"""A bounded source over an in-memory sequence.

Subtask i of p reads the items at positions i, i+p, i+2p...; its position is how many of them it
has emitted.

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
from streamlet.functions import RuntimeContext


class CollectionSource(Source):
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _CollectionReader(self.items[context.subtask_index :: context.parallelism])


class _CollectionReader(SourceReader):
    def __init__(self, items: list[Any]) -> None:
        self._items = items
        self._next = 0

    async def open(self, position: Any | None) -> None:
        self._next = 0 if position is None else int(position)

    async def read_batch(self, max_records: int) -> list[Any]:
        batch = self._items[self._next : self._next + max_records]
        self._next += len(batch)
        return batch

    @property
    def finished(self) -> bool:
        return self._next >= len(self._items)

    @property
    def has_input(self) -> bool:
        return bool(self._items)

    def position(self) -> int:
        return self._next
