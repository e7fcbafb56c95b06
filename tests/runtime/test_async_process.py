"""Asynchronous process functions (`streamlet.async_process`) in real jobs: a `KeyedProcessFunction`
whose `process_element` is `async def` runs the records of different keys concurrently and those
of one key in order, emits what the synchronous function would, on every backend, registers
timers for its own key, checkpoints and restores exactly, fails naming the record, and what cannot
run (an async generator, an `async def on_timer`) is refused when the job is built."""

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from statebackend import ValueStateDescriptor
from streamlet import Job, KeyedProcessFunction, WatermarkStrategy
from streamlet.connectors import CollectionSource
from streamlet.errors import JobDefinitionError, OperatorError
from streamlet.executor import execute_job
from streamlet.functions import OutputTag
from streamlet.metrics import JobMetrics
from streamlet.savepoints import JobControl
from tests.runtime.support import CollectSink, HeldSource, local_config, progress_or_end

WAIT_S = 30  # a bound on waits that only a runtime failing to overlap records leaves unmet
BACKENDS = ["memory", "rocksdb", "lsm"]
LATE = OutputTag("late")


class MeetingKeys(KeyedProcessFunction):
    """Records of key "a" wait for a record of key "b" that comes after them in the batch: they
    finish only if the records of different keys run concurrently. Logs when each record starts
    and ends."""

    COUNT = ValueStateDescriptor("count", default=0)

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []
        self.b_arrived: asyncio.Event | None = None

    async def process_element(self, value: tuple[str, int], ctx: Any) -> list[Any]:
        key, sequence = value
        if self.b_arrived is None:
            self.b_arrived = asyncio.Event()
        self.log.append(("start", key, sequence))
        count = ctx.state(self.COUNT)
        if key == "a":
            await asyncio.wait_for(self.b_arrived.wait(), WAIT_S)
        else:
            self.b_arrived.set()
            await asyncio.sleep(0)
        count.update(count.value() + 1)
        self.log.append(("end", key, sequence))
        return [(key, sequence, count.value())]


async def test_records_of_different_keys_overlap_and_of_one_key_keep_their_order(
    tmp_path: Path,
) -> None:
    records = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("a", 3), ("b", 1)]
    function = MeetingKeys()
    job = Job("async-overlap")
    sink = CollectSink()
    job.source(CollectionSource(records)).key_by(lambda r: r[0]).process(function).sink(sink)
    await asyncio.wait_for(execute_job(job, local_config(tmp_path)), 2 * WAIT_S)
    # a's first record was waiting while b's ran: they overlapped
    log = function.log
    assert log.index(("start", "b", 0)) < log.index(("end", "a", 0))
    # one key's records one after the other, in arrival order
    for key in ("a", "b"):
        mine = [(event, sequence) for event, k, sequence in log if k == key]
        sequences = sorted({sequence for _, sequence in mine})
        assert mine == [(event, s) for s in sequences for event in ("start", "end")]
    # outputs in input order, counts exact
    assert sink.values == [("a", 0, 1), ("a", 1, 2), ("a", 2, 3), ("b", 0, 1), ("a", 3, 4),
                           ("b", 1, 2)]  # fmt: skip


def count_and_time(function: Any, value: tuple[str, int], ctx: Any) -> list[Any]:
    """The logic of both twins below: count the key's records, set a timer after the record, send
    every third one to a side output."""
    key, _ = value
    count = ctx.state(function.COUNT)
    count.update(count.value() + 1)
    ctx.timers.register_event_time_timer(ctx.timestamp + 5)
    if count.value() % 3 == 0:
        ctx.output(LATE, (key, count.value()))
    return [(key, count.value(), ctx.timestamp)]


class SyncCount(KeyedProcessFunction):
    COUNT = ValueStateDescriptor("count", default=0)

    def process_element(self, value: tuple[str, int], ctx: Any) -> list[Any]:
        return count_and_time(self, value, ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        yield ("timer", ctx.key, timestamp, ctx.state(self.COUNT).value())


class AsyncCount(SyncCount):
    """`SyncCount` with awaits before and in the middle of its work (a few loop turns, more for
    some keys than others, so that records of different keys finish out of their order); counts
    the records in flight at once."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def process_element(self, value: tuple[str, int], ctx: Any) -> list[Any]:  # type: ignore[override]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            turns = int(value[0][1:]) % 4
            for _ in range(turns):
                await asyncio.sleep(0)
            handle = ctx.state(self.COUNT)
            await asyncio.sleep(0)
            handle.update(handle.value())  # a handle held across an await: still this key's
            for _ in range(3 - turns):
                await asyncio.sleep(0)
            return count_and_time(self, value, ctx)
        finally:
            self.in_flight -= 1


def timed_records(count: int) -> list[tuple[str, int]]:
    return [(f"k{(i * 7) % 11}", i) for i in range(count)]


async def run_count(function: SyncCount, config: dict[str, Any]) -> tuple[list, list]:
    job = Job("async-count")
    main, side = CollectSink(timestamps=True), CollectSink(timestamps=True)
    processed = (
        job.source(
            CollectionSource(timed_records(300)),
            watermarks=WatermarkStrategy.monotonous_timestamps(timestamp=lambda r: r[1]),
        )
        .key_by(lambda r: r[0])
        .process(function)
    )
    processed.sink(main)
    processed.get_side_output(LATE).sink(side)
    await execute_job(job, config)
    return main.values, side.values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("async_state", [True, False], ids=["async-state", "sync-state"])
async def test_outputs_equal_the_synchronous_functions_on_every_backend(
    tmp_path: Path, backend: str, async_state: bool
) -> None:
    options = {
        "state.backend": backend,
        "pipeline.batch-size": 50,
        "state.async.max-records": 7,
        "state.async.enabled": async_state,
    }
    expected = await run_count(SyncCount(), local_config(tmp_path / "sync", **options))
    function = AsyncCount()
    got = await run_count(function, local_config(tmp_path / "async", **options))
    assert got == expected
    main, side = got
    counts = Counter(key for key, _ in timed_records(300))
    finals: dict[str, int] = {}
    for (name, *rest), _ in main:
        if name != "timer":
            finals[name] = rest[0]
    assert finals == dict(counts)  # counts exact
    assert len(side) == sum(n // 3 for n in counts.values())
    assert 1 < function.most_in_flight <= 7  # records overlapped, at most a part at once


class TimerAfterAwait(KeyedProcessFunction):
    """Registers a timer after an await that lets the records of other keys run."""

    COUNT = ValueStateDescriptor("count", default=0)

    async def process_element(self, value: tuple[str, int], ctx: Any) -> None:
        await asyncio.sleep(0.001 * (int(value[0][1:]) % 3))
        count = ctx.state(self.COUNT)
        count.update(count.value() + 1)
        ctx.timers.register_event_time_timer(ctx.timestamp + 100)
        return None

    def on_timer(self, timestamp: int, ctx: Any) -> Any:
        return [(ctx.key, timestamp, ctx.state(self.COUNT).value())]


async def test_timers_registered_after_an_await_fire_for_their_key(tmp_path: Path) -> None:
    records = timed_records(60)
    job = Job("async-timers")
    sink = CollectSink()
    (
        job.source(
            CollectionSource(records),
            watermarks=WatermarkStrategy.monotonous_timestamps(timestamp=lambda r: r[1]),
        )
        .key_by(lambda r: r[0])
        .process(TimerAfterAwait())
        .sink(sink)
    )
    await execute_job(job, local_config(tmp_path, **{"state.backend": "lsm"}))
    expected = [
        (key, timestamp + 100, sum(1 for k, t in records if k == key))
        for key, timestamp in sorted(records, key=lambda r: r[1])
    ]
    # every timer fired for the key of the record that set it (at the end: the final watermark)
    assert sorted(sink.values, key=lambda r: r[1]) == expected


class SlowCount(KeyedProcessFunction):
    """Counts with an await between reading and writing the count; notes how many checkpoints
    had completed when each record ran."""

    COUNT = ValueStateDescriptor("count", default=0)

    def __init__(self, metrics: JobMetrics) -> None:
        self.metrics = metrics
        self.checkpoints_seen: set[int] = set()

    async def process_element(self, value: tuple[str, int], ctx: Any) -> list[Any]:
        self.checkpoints_seen.add(self.metrics.checkpoints)
        count = ctx.state(self.COUNT)
        before = count.value()
        await asyncio.sleep(0.01)
        count.update(before + 1)
        return [(value[0], before + 1)]


async def test_a_checkpoint_taken_with_records_in_flight_restores_exact_counts(
    tmp_path: Path,
) -> None:
    records = [(f"k{i % 13}", i) for i in range(1200)]
    config = local_config(
        tmp_path,
        **{"state.backend": "lsm", "checkpoint.interval": "50ms", "pipeline.batch-size": 10},
    )

    def counting_job(source: Any, function: SlowCount, sink: CollectSink) -> Job:
        job = Job("async-checkpoint")
        job.source(source).key_by(lambda r: r[0]).process(function).uid("count").sink(sink)
        return job

    first = CollectSink()
    held = HeldSource(CollectionSource(records), limit=len(records) // 2 + 7)
    metrics = JobMetrics()
    control = JobControl()
    function = SlowCount(metrics)
    run = asyncio.create_task(
        execute_job(counting_job(held, function, first), config, metrics=metrics, control=control)
    )
    await progress_or_end(lambda: len(first.values) >= len(records) // 2 + 7, run)
    started = time.monotonic()
    await progress_or_end(lambda: metrics.checkpoints >= 2 or time.monotonic() > started + 60, run)
    assert metrics.checkpoints >= 2
    control.stop.set()  # a final checkpoint at the source's position, then the end
    await asyncio.wait_for(run, 120)
    # checkpoints were taken between the parts of the stream, each part's records in flight
    assert len(function.checkpoints_seen) >= 2
    second = CollectSink()
    again = SlowCount(JobMetrics())
    await execute_job(counting_job(CollectionSource(records), again, second), config)
    final: dict[str, int] = {}
    for key, count in first.values + second.values:
        final[key] = count
    assert final == dict(Counter(key for key, _ in records))
    # each count once: nothing the checkpoint held was counted again after the restore
    assert sorted(first.values + second.values) == sorted(
        (key, n) for key, total in final.items() for n in range(1, total + 1)
    )


class FailsOnOne(KeyedProcessFunction):
    """Fails on ("bad", 3) after an await; the other key's record waits for ever meanwhile."""

    def __init__(self) -> None:
        self.cancelled: list[Any] = []

    async def process_element(self, value: tuple[str, int], ctx: Any) -> None:
        if value[0] == "bad":
            await asyncio.sleep(0)
            raise ValueError(f"cannot take {value[1]}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(value)
            raise


async def test_a_failing_record_is_named_and_the_others_in_flight_are_cancelled(
    tmp_path: Path,
) -> None:
    function = FailsOnOne()
    job = Job("async-fails")
    (
        job.source(CollectionSource([("waits", 1), ("bad", 3)]))
        .key_by(lambda r: r[0])
        .process(function, name="checker")
        .sink(CollectSink())
    )
    with pytest.raises(OperatorError) as failure:
        await asyncio.wait_for(execute_job(job, local_config(tmp_path)), WAIT_S)
    message = str(failure.value)
    assert "operator 'checker' failed at " in message
    assert message.endswith("on record ('bad', 3): ValueError: cannot take 3")
    assert function.cancelled == [("waits", 1)]


class RaisesCancelled(KeyedProcessFunction):
    async def process_element(self, value: str, ctx: Any) -> list[str]:
        if value == "gives-up":
            raise asyncio.CancelledError("a request of its own was cancelled")
        return [value]


async def test_a_record_whose_own_code_raises_cancelled_error_fails_instead_of_vanishing(
    tmp_path: Path,
) -> None:
    job = Job("async-cancelled")
    job.source(CollectionSource(["fine", "gives-up"])).key_by(str).process(RaisesCancelled()).sink(
        CollectSink()
    )
    with pytest.raises(OperatorError, match=r"on record 'gives-up': CancelledError: a request"):
        await asyncio.wait_for(execute_job(job, local_config(tmp_path)), WAIT_S)


class AsyncTimer(KeyedProcessFunction):
    def process_element(self, value: Any, ctx: Any) -> None:
        return None

    async def on_timer(self, timestamp: int, ctx: Any) -> None:  # type: ignore[override]
        return None


class AsyncGenerator(KeyedProcessFunction):
    async def process_element(self, value: Any, ctx: Any) -> Any:  # type: ignore[override]
        yield value


@pytest.mark.parametrize(
    ("function", "refusal"),
    [
        (AsyncTimer(), "AsyncTimer.on_timer is async def, but timers fire synchronously"),
        (AsyncGenerator(), "AsyncGenerator.process_element is an async generator"),
    ],
    ids=["async-on-timer", "async-generator"],
)
def test_what_cannot_run_is_refused_when_the_job_is_built(
    function: KeyedProcessFunction, refusal: str
) -> None:
    job = Job("async-refused")
    keyed = job.source(CollectionSource([1])).key_by(str)
    with pytest.raises(JobDefinitionError, match=re.escape(refusal)):
        keyed.process(function)


def test_the_documented_example_runs_and_prints_what_it_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "runtime.md").read_text()
    section = page.split("### Asynchronous process functions", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"prints:\n\n```\n(.*?)```", section, re.S)
    assert code is not None and shown is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "runtime.md", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == shown.group(1)
