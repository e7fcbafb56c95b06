"""Helpers for runtime tests: a sink that collects into a list, a configuration on tmp_path, a
source whose end the test controls, and a wait bounded by the job's end.

No test waits on a condition the code under test can make impossible: a job a test stops or
watches reads a `HeldSource`, so it cannot end (or read everything) before the test has seen what it
waits for, and every wait for a job's progress also ends when the job does (`progress_or_end`).
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamlet.connectors import Sink, SinkWriter, Source, SourceReader
from streamlet.functions import RuntimeContext

POLL_S = 0.01


class CollectSink(Sink):
    """Appends every value (or `(value, timestamp)` with `timestamps=True`) to `self.values`."""

    def __init__(self, timestamps: bool = False) -> None:
        self.values: list[Any] = []
        self.timestamps = timestamps

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        return _CollectWriter(self)


class _CollectWriter(SinkWriter):
    def __init__(self, sink: CollectSink) -> None:
        self._sink = sink

    def write(self, value: Any, timestamp: int | None) -> None:
        self._sink.values.append((value, timestamp) if self._sink.timestamps else value)


def local_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Checkpoints and state under `tmp_path`; keys given with `_` for `.` and `-` as usual."""
    config = {
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.interval": 0,
    }
    config.update(overrides)
    return config


def never() -> bool:
    return False


class HeldSource(Source):
    """`source`, with its end under the test's control: each reader hands out at most `limit`
    records after it opens (None: all of them) and does not finish, until `release()` is true.

    By default it is never released: a job reading it then ends only when it is stopped (or
    killed), whatever the speed of the machine.
    """

    def __init__(
        self, source: Source, limit: int | None = None, release: Callable[[], bool] = never
    ) -> None:
        self.source = source
        self.limit = limit
        self.release = release

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _HeldReader(self.source.create_reader(context), self.limit, self.release)

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        return self.source.redistribute(positions, parallelism)


class _HeldReader(SourceReader):
    def __init__(
        self, reader: SourceReader, limit: int | None, release: Callable[[], bool]
    ) -> None:
        self._reader = reader
        self._limit = limit
        self._release = release
        self._handed_out = 0

    async def open(self, position: Any | None) -> None:
        await self._reader.open(position)

    async def read_batch(self, max_records: int) -> list[Any]:
        if not self._release() and self._limit is not None:
            max_records = min(max_records, self._limit - self._handed_out)
        if max_records <= 0 or self._reader.finished:
            await asyncio.sleep(POLL_S)  # held: checkpoints and a stop still get through
            return []
        values = await self._reader.read_batch(max_records)
        self._handed_out += len(values)
        return values

    @property
    def finished(self) -> bool:
        return self._reader.finished and self._release()

    @property
    def has_input(self) -> bool:
        return self._reader.has_input

    def position(self) -> Any:
        return self._reader.position()

    async def close(self) -> None:
        await self._reader.close()


async def progress_or_end(condition: Callable[[], bool], run: "asyncio.Task[Any]") -> None:
    """Wait until `condition()` holds or the job `run` has ended, whichever comes first.

    The caller then asserts the condition: a job that ended first (or failed) fails the test
    instead of leaving it waiting for something that can no longer happen.
    """
    while not condition() and not run.done():
        await asyncio.sleep(POLL_S)
