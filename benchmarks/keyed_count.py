"""A keyed count, event by event: streamlet on each backend against Bytewax 0.21.1 in the same run.

Workload: N words (1,000,000; quick 200,000) drawn with `random.Random(42)` from a vocabulary of
100,000 with weights 1/rank. Per record, the word's count in keyed state goes up by one and the
running count `(word, count)` is emitted to a sink that keeps the last count per word; after each
run every count is checked against `collections.Counter` (the benchmark fails if one differs).

Runs, each at parallelism 1 in this process, timed over the whole run (wall and process CPU):
- `dict`: a plain dict loop, the ceiling;
- `bytewax`: `stateful_map` on a `TestingSource` (batch 1000), one worker, `run_main`;
- `bytewax_recovery`: the same with SQLite recovery (1 s epochs);
- `memory`, `rocksdb`: streamlet, `key_by(word).stateful_map(count)` (the state a count, the
  result `(word, count)`: what Bytewax runs), no checkpoints;
- `lsm`: the same on the `lsm` backend with checkpoints every second on `file://`;
- `memory_process`, `rocksdb_process`, `lsm_process`: the same three with the count written as a
  `KeyedProcessFunction` (`key_by(word).process(Count())`, a `ValueState`).

Prints `<run>_events_per_s` and `<run>_cpu_us_per_event` (process CPU time over events) for each,
and `memory_vs_bytewax`, `lsm_vs_bytewax_recovery` and `lsm_vs_memory` (ratios of events/s), and
the same three for the `_process` runs (`memory_process_vs_bytewax`, ...).
"""

import gc
import itertools
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import CollectionSource
from streamlet.connectors.base import Sink, SinkWriter
from streamlet.functions import RuntimeContext

VOCABULARY = 100_000
SEED = 42
BYTEWAX_BATCH = 1000
BACKENDS = {
    "memory": {"state.backend": "memory"},
    "rocksdb": {"state.backend": "rocksdb"},
    "lsm": {"state.backend": "lsm", "checkpoint.interval": "1s"},
}
# Each backend runs the count as `stateful_map` (run `<backend>`) and as a KeyedProcessFunction
# (run `<backend>_process`).
APIS = {"": "stateful_map", "_process": "process"}

LastCounts = dict[str, int]


def words(count: int) -> list[str]:
    """`count` words from the vocabulary, Zipf-distributed (weight 1/rank)."""
    vocabulary = [f"word{rank}" for rank in range(VOCABULARY)]
    cumulative = list(itertools.accumulate(1 / rank for rank in range(1, VOCABULARY + 1)))
    return random.Random(SEED).choices(vocabulary, cum_weights=cumulative, k=count)


def count(previous: int | None, word: str) -> tuple[int, tuple[str, int]]:
    """The word's running count, for `stateful_map` (as Bytewax's mapper)."""
    total = (previous or 0) + 1
    return total, (word, total)


class Count(KeyedProcessFunction):
    """The word's running count, in keyed state (the same count as a `KeyedProcessFunction`)."""

    COUNT = ValueStateDescriptor("count", default=0)

    def process_element(self, word: str, ctx: Any) -> Any:
        state = ctx.state(self.COUNT)
        count = state.value() + 1
        state.update(count)
        return ((word, count),)


class LastCountSink(Sink):
    """Keeps the last count emitted per word."""

    def __init__(self, last: LastCounts) -> None:
        self.last = last

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        return _LastCountWriter(self.last)


class _LastCountWriter(SinkWriter):
    def __init__(self, last: LastCounts) -> None:
        self._last = last

    def write(self, value: Any, timestamp: int | None) -> None:
        word, count = value
        self._last[word] = count


def _streamlet(data: list[str], workdir: Path, settings: dict[str, Any], api: str) -> LastCounts:
    last: LastCounts = {}
    job = Job("keyed-count")
    words = job.source(CollectionSource(data), name="words").key_by(lambda word: word)
    if api == "process":
        counts = words.process(Count(), name="count")
    else:
        counts = words.stateful_map(count, name="count")
    counts.sink(LastCountSink(last), name="last")
    config = {
        "checkpoint.dir": (workdir / "checkpoints").as_uri(),
        "state.dir": (workdir / "state").as_uri(),
        "state.local-dir": str(workdir / "local"),
        "checkpoint.interval": 0,
        "checkpoint.restore": False,
        **settings,
    }
    job.execute(config, parallelism=1)
    return last


def _dict_loop(data: list[str]) -> LastCounts:
    counts: dict[str, int] = {}
    last: LastCounts = {}
    for word in data:
        count = counts.get(word, 0) + 1
        counts[word] = count
        last[word] = count
    return last


def _bytewax(data: list[str], recovery_dir: Path | None) -> LastCounts:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    last: LastCounts = {}

    class Partition(StatelessSinkPartition):
        def write_batch(self, items: list[tuple[str, int]]) -> None:
            for word, count in items:
                last[word] = count

    class LastSink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Partition:
            return Partition()

    def count(state: int | None, word: str) -> tuple[int, int]:
        state = 1 if state is None else state + 1
        return state, state

    flow = Dataflow("keyed_count")
    stream = op.input("words", flow, TestingSource(data, batch_size=BYTEWAX_BATCH))
    keyed = op.key_on("key", stream, lambda word: word)
    op.output("last", op.stateful_map("count", keyed, count), LastSink())
    if recovery_dir is None:
        run_main(flow)
    else:
        recovery_dir.mkdir(parents=True)
        init_db_dir(recovery_dir, 1)
        run_main(
            flow,
            epoch_interval=timedelta(seconds=1),
            recovery_config=RecoveryConfig(str(recovery_dir)),
        )
    return last


def _timed(name: str, work: Callable[[], LastCounts], expected: Counter[str]) -> dict[str, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    last = work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    wrong = [word for word in expected if last.get(word) != expected[word]]
    if wrong or len(last) != len(expected):
        word = wrong[0] if wrong else next(iter(set(last) - set(expected)))
        raise AssertionError(
            f"{name}: {len(wrong)} wrong counts, {len(last)} words for {len(expected)}; e.g. "
            f"{word!r}: {last.get(word)} instead of {expected.get(word)}"
        )
    events = sum(expected.values())
    return {f"{name}_events_per_s": events / wall, f"{name}_cpu_us_per_event": cpu / events * 1e6}


def run(quick: bool = False) -> dict[str, float | int]:
    data = words(200_000 if quick else 1_000_000)
    expected = Counter(data)
    result: dict[str, float | int] = {"events": len(data), "vocabulary": VOCABULARY}
    workdir = Path(tempfile.mkdtemp(prefix="bench-keyed-count-"))
    try:
        result.update(_timed("dict", lambda: _dict_loop(data), expected))
        result.update(_timed("bytewax", lambda: _bytewax(data, None), expected))
        result.update(
            _timed("bytewax_recovery", lambda: _bytewax(data, workdir / "bytewax"), expected)
        )
        for suffix, api in APIS.items():
            for backend, settings in BACKENDS.items():
                name = backend + suffix
                result.update(
                    _timed(
                        name,
                        lambda s=settings, n=name, a=api: _streamlet(data, workdir / n, s, a),
                        expected,
                    )
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for suffix in APIS:
        memory, lsm = result[f"memory{suffix}_events_per_s"], result[f"lsm{suffix}_events_per_s"]
        result[f"memory{suffix}_vs_bytewax"] = memory / result["bytewax_events_per_s"]
        result[f"lsm{suffix}_vs_bytewax_recovery"] = (
            lsm / result["bytewax_recovery_events_per_s"]
        )
        result[f"lsm{suffix}_vs_memory{suffix}"] = lsm / memory
    return result
