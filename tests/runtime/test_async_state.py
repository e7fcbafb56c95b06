"""Asynchronous, batched state access (`streamlet.async_state`) in jobs on the lsm backend whose
tables live on `slowmem://` (tests.support.slow_fs: every table read takes 20 ms, table writes
can be held back): no state read waits on the event loop, records keep their order, timers and
barriers see every record before them, and a write stall is awaited while the loop runs on."""

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statebackend import KeyedStateBackend, ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction, WatermarkStrategy
from streamlet.connectors import CollectionSource
from streamlet.executor import execute_job
from streamlet.metrics import JobMetrics
from streamlet.savepoints import JobControl
from tests.runtime.support import CollectSink, HeldSource, local_config, progress_or_end
from tests.support.slow_fs import SlowMemoryFileSystem

KEYS = [f"key-{i}" for i in range(120)]
ROUNDS = 4
PAD = "x" * 100  # state of some size: a key's entry in a block of its own, or nearly


@pytest.fixture(autouse=True)
def slow_tables() -> Iterator[None]:
    SlowMemoryFileSystem.reset(slow=True)
    yield
    SlowMemoryFileSystem.reset()


def lsm_config(tmp_path: Path, **lsm: Any) -> dict[str, Any]:
    """lsm on slowmem://, small memtables (state reaches tables at once), no block cache, no
    compactions (every table read is a read of the job's), and a state cache of one value."""
    options = {
        "lsm.memtable_bytes": 4096,
        "lsm.block_size": 256,
        "lsm.block_cache_bytes": 0,
        "lsm.auto_compact": False,
    }
    return local_config(
        tmp_path,
        **{
            "state.backend": "lsm",
            "state.dir": f"slowmem://async-{uuid.uuid4().hex}/state",
            "state.cache-bytes": 0,
            "state.options": json.dumps({**options, **lsm}),
            "pipeline.batch-size": 60,
        },
    )


def rounds_of_keys(seed: int) -> list[tuple[str, int]]:
    """Every key once per round, in a new order each round: `(key, round)`."""
    rng = random.Random(seed)
    records = []
    for round_ in range(ROUNDS):
        keys = list(KEYS)
        rng.shuffle(keys)
        records += [(key, round_) for key in keys]
    return records


class LoopThreadReads:
    """Counts the table reads made on the calling (event loop) thread."""

    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.count = 0
        self._real = SlowMemoryFileSystem.cat_file

    def __enter__(self) -> "LoopThreadReads":
        recorder = self

        def cat_file(fs: Any, path: str, *args: Any, **kwargs: Any) -> bytes:
            if "/tables/" in path and threading.get_ident() == recorder.loop_thread:
                recorder.count += 1
            return recorder._real(fs, path, *args, **kwargs)

        SlowMemoryFileSystem.cat_file = cat_file  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        SlowMemoryFileSystem.cat_file = self._real  # type: ignore[method-assign]


async def test_state_is_read_off_the_loop_concurrently_and_records_keep_their_order(
    tmp_path: Path,
) -> None:
    records = rounds_of_keys(seed=1)
    job = Job("async-order")
    sink = CollectSink()
    (
        job.source(CollectionSource(records))
        .key_by(lambda record: record[0])
        .stateful_map(
            lambda state, record: (
                (record[1], PAD),
                (record[0], None if state is None else state[0], record[1]),
            )
        )
        .sink(sink)
    )
    with LoopThreadReads() as on_loop:
        await execute_job(job, lsm_config(tmp_path))
    by_key: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for key, previous, round_ in sink.values:
        by_key[key].append((previous, round_))
    # Same key: in arrival order, each record seeing the one before it.
    expected = [(None, 0)] + [(r - 1, r) for r in range(1, ROUNDS)]
    assert by_key == {key: expected for key in KEYS}
    # Different keys: their reads overlapped, none on the event loop.
    assert SlowMemoryFileSystem.reads >= len(KEYS)  # most reads reached a table
    assert SlowMemoryFileSystem.max_in_flight > 4
    assert on_loop.count == 0


async def test_a_batch_larger_than_the_bound_is_read_ahead_and_run_in_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int]] = []
    real_prefetch = KeyedStateBackend.prefetch

    def prefetch(backend: KeyedStateBackend, keys: list[Any], max_bytes: int) -> None:
        asked.append((len(keys), max_bytes))
        real_prefetch(backend, keys, max_bytes)

    monkeypatch.setattr(KeyedStateBackend, "prefetch", prefetch)
    config = {
        **lsm_config(tmp_path),  # batches of 60 records
        "state.async.max-records": 7,
        "state.async.max-bytes": 5000,
    }
    records = rounds_of_keys(seed=4)
    job = Job("async-bounds")
    sink = CollectSink()
    (
        job.source(CollectionSource(records))
        .key_by(lambda record: record[0])
        .stateful_map(lambda n, record: ((n or 0) + 1, (record[0], (n or 0) + 1)))
        .sink(sink)
    )
    await execute_job(job, config)
    assert max(size for size, _ in asked) == 7 and {bound for _, bound in asked} == {5000}
    assert sum(size for size, _ in asked) == len(records)  # every record's key, once
    seen: Counter[str] = Counter()
    expected = []
    for key, _ in records:
        seen[key] += 1
        expected.append((key, seen[key]))
    assert sink.values == expected


class CountThenReport(KeyedProcessFunction):
    """Counts a key's records; each registers a timer at its timestamp, which reports the count
    when it fires."""

    COUNT = ValueStateDescriptor("count", default=0)
    PADDING = ValueStateDescriptor("padding")

    def process_element(self, value: Any, ctx: Any) -> Any:
        count = ctx.state(self.COUNT)
        count.update(count.value() + 1)
        ctx.state(self.PADDING).update(PAD)
        ctx.timers.register_event_time_timer(ctx.timestamp)
        return None

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        yield (ctx.key, timestamp, ctx.state(self.COUNT).value())


async def test_timers_see_every_record_before_their_watermark(tmp_path: Path) -> None:
    records = [(key, ts) for ts, (key, _) in enumerate(rounds_of_keys(seed=2))]
    job = Job("async-timers")
    sink = CollectSink()
    (
        job.source(
            CollectionSource(records),
            watermarks=WatermarkStrategy.monotonous_timestamps(timestamp=lambda r: r[1]),
        )
        .key_by(lambda record: record[0])
        .process(CountThenReport())
        .sink(sink)
    )
    await execute_job(job, lsm_config(tmp_path))
    assert len(sink.values) == len(records)
    for key, timestamp, count in sink.values:
        # every record of the key up to the timer's time came before the watermark that fired it
        at_least = sum(1 for k, ts in records if k == key and ts <= timestamp)
        assert count >= at_least, (key, timestamp, count, at_least)
    assert SlowMemoryFileSystem.max_in_flight > 4


async def test_a_barrier_sees_every_record_before_it_and_a_restore_counts_exactly(
    tmp_path: Path,
) -> None:
    records = rounds_of_keys(seed=3)
    config = {**lsm_config(tmp_path), "checkpoint.interval": "100ms"}

    def counting_job(source: Any, sink: CollectSink) -> Job:
        job = Job("async-barrier")
        (
            job.source(source)
            .key_by(lambda record: record[0])
            .stateful_map(
                lambda state, record: (
                    ((state or (0,))[0] + 1, PAD),
                    (record[0], (state or (0,))[0] + 1),
                )
            )
            .uid("count")
            .sink(sink)
        )
        return job

    first = CollectSink()
    held = HeldSource(CollectionSource(records), limit=len(records) // 2 + 7)
    metrics = JobMetrics()
    control = JobControl()
    run = asyncio.create_task(
        execute_job(counting_job(held, first), config, metrics=metrics, control=control)
    )
    await progress_or_end(lambda: len(first.values) >= len(records) // 2 + 7, run)
    started = time.monotonic()
    await progress_or_end(lambda: metrics.checkpoints >= 2 or time.monotonic() > started + 60, run)
    control.stop.set()  # a final checkpoint at the source's position, then the end
    await asyncio.wait_for(run, 120)
    second = CollectSink()
    await execute_job(counting_job(CollectionSource(records), second), config)
    final: dict[str, int] = {}
    for key, count in first.values + second.values:
        final[key] = count
    assert final == dict(Counter(key for key, _ in records))
    assert SlowMemoryFileSystem.max_in_flight > 4


async def test_a_write_stall_is_awaited_while_the_loop_runs_on_and_the_source_waits(
    tmp_path: Path,
) -> None:
    SlowMemoryFileSystem.reset()  # reads at full speed
    SlowMemoryFileSystem.write_gate.clear()  # no flush finishes: the DB stops its writers
    records = [(KEYS[i % len(KEYS)], i) for i in range(20_000)]
    config = lsm_config(tmp_path, **{"lsm.max_immutables": 1})
    job = Job("async-stall")
    sink = CollectSink()
    (
        job.source(CollectionSource(records))
        .key_by(lambda record: record[0])
        .stateful_map(lambda state, record: ((record[1], PAD), record[1]))
        .sink(sink)
    )
    metrics = JobMetrics()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    seen: dict[str, Any] = {}

    def observe() -> None:
        """From a thread of its own (the loop may be blocked): once a write stop began, what the
        loop and the source did for half a second; then let the flushes through."""
        try:
            deadline = time.monotonic() + 60
            while metrics.write_stalls()[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen["stopped"] = metrics.write_stalls()[0] > 0
            ticks_before, read_before = ticks, metrics.records_in
            time.sleep(0.5)
            seen["ticks"] = ticks - ticks_before
            seen["read"] = metrics.records_in - read_before
            seen["read_before"] = read_before
        finally:
            SlowMemoryFileSystem.write_gate.set()

    ticker = asyncio.create_task(tick())
    observer = threading.Thread(target=observe, daemon=True)
    observer.start()
    try:
        await asyncio.wait_for(execute_job(job, config, metrics=metrics), 120)
    finally:
        ticker.cancel()
        SlowMemoryFileSystem.write_gate.set()
        observer.join(70)
    assert seen["stopped"]
    assert seen["ticks"] >= 10  # the loop ran on while the DB was stopped
    assert seen["read"] == 0 and seen["read_before"] < len(records)  # the source waited
    assert len(sink.values) == len(records)
