"""A data generator source: `generate(index, rng)` produces record `index`, optionally rate-limited
and bounded.

Records are numbered 0, 1, 2...; subtask i of p produces the indices i, i+p, i+2p... (its split,
`streamlet.connectors.splits`; a restore with another parallelism moves the splits with their
positions). Each call gets a `random.Random` freshly seeded from `(seed, index)` (do not keep it),
so the same index always gives the same record, also after a restore; `source.record(index)`
computes one. `rate` is the total records per second over all subtasks (each reader produces its
splits' share of it; None: as fast as possible), `count` the total number of records (None:
unbounded).

>>> from streamlet import Job
>>> from streamlet.connectors import DataGeneratorSource, PrintSink
>>> job = Job("doc-datagen")
>>> source = DataGeneratorSource(lambda i, rng: (i, rng.randint(1, 6)), count=3, seed=7)
>>> _ = job.source(source).sink(PrintSink())
>>> _ = job.execute({"checkpoint.dir": "memory://doc-datagen"})
(0, 4)
(1, 2)
(2, 2)
"""

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from streamlet.connectors.base import Source, SourceReader
from streamlet.connectors.splits import IndexSplits, Split, initial_splits, redistribute_splits
from streamlet.functions import RuntimeContext

Generator = Callable[[int, random.Random], Any]
_MAX_WAIT_S = 0.05  # keep waits short so that checkpoints are not delayed
_SEED_STRIDE = 1 << 40


class DataGeneratorSource(Source):
    def __init__(
        self,
        generate: Generator,
        rate: float | None = None,
        count: int | None = None,
        seed: int = 0,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if count is not None and count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self.generate = generate
        self.rate = rate
        self.count = count
        self.seed = seed
        self._rng = random.Random()

    def record(self, index: int) -> Any:
        """Record `index`, as the source produces it."""
        self._rng.seed(self.seed * _SEED_STRIDE + index)
        return self.generate(index, self._rng)

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _GeneratorReader(self, initial_splits(context.subtask_index, context.parallelism))

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        return redistribute_splits(positions, parallelism)


class _GeneratorReader(SourceReader):
    def __init__(self, source: DataGeneratorSource, splits: list[Split]) -> None:
        self._source = source
        self._splits = IndexSplits(splits, source.count)
        self._rate: float | None = None
        self._produced = 0
        self._started_at = 0.0

    async def open(self, position: Any | None) -> None:
        if position is not None:
            self._splits = IndexSplits(position, self._source.count)
        if self._source.rate is not None:
            self._rate = self._source.rate * self._splits.share
        self._started_at = time.monotonic()

    async def read_batch(self, max_records: int) -> list[Any]:
        wanted = max_records
        if self._rate is not None:
            elapsed = time.monotonic() - self._started_at
            allowed = int(elapsed * self._rate) - self._produced
            if allowed <= 0:
                await asyncio.sleep(min(_MAX_WAIT_S, (1 - allowed) / self._rate))
                return []
            wanted = min(wanted, allowed)
        record = self._source.record
        batch = [record(index) for index in self._splits.take(wanted)]
        self._produced += len(batch)
        return batch

    @property
    def finished(self) -> bool:
        return self._splits.finished

    @property
    def has_input(self) -> bool:
        return not self._splits.finished

    def position(self) -> list[Split]:
        return self._splits.position()
