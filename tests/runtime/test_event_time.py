"""Event time: watermarks, windows (tumbling, sliding, session), lateness, timers and joins."""

from pathlib import Path
from typing import Any

from statebackend import ValueStateDescriptor
from streamlet import (
    AggregateFunction,
    EventTimeSessionWindows,
    Job,
    KeyedProcessFunction,
    OutputTag,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
    WatermarkStrategy,
)
from streamlet.connectors import CollectionSource
from streamlet.executor import execute_job
from tests.runtime.support import CollectSink, local_config

BY_TS = WatermarkStrategy.monotonous_timestamps(lambda r: r[1])


def timed_source(job: Job, records: list[tuple[str, int]], out_of_orderness: int = 0):
    strategy = WatermarkStrategy.bounded_out_of_orderness(out_of_orderness, lambda r: r[1])
    return job.source(CollectionSource(records), watermarks=strategy)


def count(a: tuple, b: tuple) -> tuple:
    return (a[0], a[1] + b[1])


async def run(job: Job, tmp_path: Path, **config: Any) -> None:
    # One record per batch, so a watermark follows every record.
    await execute_job(job, local_config(tmp_path, **{"pipeline.batch-size": 1, **config}))


async def test_tumbling_windows_fire_on_watermark_with_window_end_timestamps(
    tmp_path: Path,
) -> None:
    job = Job("tumbling")
    sink = CollectSink(timestamps=True)
    records = [("a", 100), ("b", 200), ("a", 900), ("a", 1100), ("b", 2500)]
    (
        timed_source(job, records)
        .map(lambda r: (r[0], 1))
        .key_by(lambda p: p[0])
        .window(TumblingEventTimeWindows(1000))
        .reduce(count)
        .sink(sink)
    )
    await run(job, tmp_path)
    assert sorted(sink.values) == [
        (("a", 1), 1999),
        (("a", 2), 999),
        (("b", 1), 999),
        (("b", 1), 2999),
    ]


async def test_sliding_windows_count_each_record_in_every_window(tmp_path: Path) -> None:
    job = Job("sliding")
    sink = CollectSink(timestamps=True)
    records = [("a", 0), ("a", 600), ("a", 1200)]

    def window_count(key, window, elements):
        yield (key, window.start, window.end, len(elements))

    (
        timed_source(job, records)
        .key_by(lambda r: r[0])
        .window(SlidingEventTimeWindows(1000, 500))
        .process(window_count)
        .sink(sink)
    )
    await run(job, tmp_path)
    assert sorted(v for v, _ in sink.values) == [
        ("a", -500, 500, 1),
        ("a", 0, 1000, 2),
        ("a", 500, 1500, 2),
        ("a", 1000, 2000, 1),
    ]


async def test_session_windows_merge_records_closer_than_the_gap(tmp_path: Path) -> None:
    job = Job("sessions")
    sink = CollectSink()
    # Out of order within 1 s: the record at 450 bridges the sessions at 100 and 700.
    records = [("a", 100), ("b", 150), ("a", 700), ("a", 450), ("a", 5000), ("b", 5100)]

    def session(key, window, elements):
        yield (key, window.start, window.end, sorted(ts for _, ts in elements))

    (
        timed_source(job, records, out_of_orderness=1000)
        .key_by(lambda r: r[0])
        .window(EventTimeSessionWindows(400))
        .process(session)
        .sink(sink)
    )
    await run(job, tmp_path)
    assert sorted(sink.values) == [
        ("a", 100, 1100, [100, 450, 700]),
        ("a", 5000, 5400, [5000]),
        ("b", 150, 550, [150]),
        ("b", 5100, 5500, [5100]),
    ]


async def test_late_records_go_to_the_side_output_and_lateness_refires(tmp_path: Path) -> None:
    late = OutputTag("late")
    results = {}
    for lateness in (0, 1000):
        job = Job(f"late-{lateness}")
        sink, late_sink = CollectSink(), CollectSink()
        records = [("a", 1000), ("a", 2500), ("a", 1500), ("a", 4000), ("a", 1200)]
        counts = (
            timed_source(job, records)
            .map(lambda r: (r[0], 1))
            .key_by(lambda p: p[0])
            .window(TumblingEventTimeWindows(2000))
            .allowed_lateness(lateness)
            .side_output_late_data(late)
            .reduce(count)
        )
        counts.sink(sink)
        counts.get_side_output(late).sink(late_sink)
        await run(job, tmp_path / str(lateness))
        results[lateness] = (sink.values, late_sink.values)
    assert results[0] == ([("a", 1), ("a", 1), ("a", 1)], [("a", 1), ("a", 1)])
    # With 1 s lateness the record at 1500 refires [0, 2000); the one at 1200 comes after the
    # watermark passed 2999 and is late.
    assert results[1000] == ([("a", 1), ("a", 2), ("a", 1), ("a", 1)], [("a", 1)])


class Alarm(KeyedProcessFunction):
    """Emits (key, first ts, timer ts) 500 ms of event time after a key's first record."""

    FIRST = ValueStateDescriptor("first")

    def process_element(self, value, ctx):
        first = ctx.state(self.FIRST)
        if first.value() is None:
            first.update(ctx.timestamp)
            ctx.timers.register_event_time_timer(ctx.timestamp + 500)
        return None

    def on_timer(self, timestamp, ctx):
        yield (ctx.key, ctx.state(self.FIRST).value(), timestamp, ctx.timestamp)
        ctx.state(self.FIRST).clear()


async def test_event_time_timers_fire_per_key_when_the_watermark_passes(tmp_path: Path) -> None:
    job = Job("timers")
    sink = CollectSink()
    # The record at 700 arrives before the watermark passes 500, so it is in a's first round.
    records = [("a", 0), ("b", 100), ("a", 300), ("a", 700), ("b", 2000), ("a", 2100)]
    timed_source(job, records).key_by(lambda r: r[0]).process(Alarm()).set_parallelism(2).sink(sink)
    await run(job, tmp_path)
    assert sorted(sink.values) == [
        ("a", 0, 500, 500),
        ("a", 2100, 2600, 2600),
        ("b", 100, 600, 600),
        ("b", 2000, 2500, 2500),
    ]


class ProcessingTimeEcho(KeyedProcessFunction):
    def process_element(self, value, ctx):
        ctx.timers.register_processing_time_timer(ctx.timers.current_processing_time())
        return None

    def on_timer(self, timestamp, ctx):
        yield ("fired", ctx.key)


async def test_processing_time_timers_fire(tmp_path: Path) -> None:
    job = Job("processing-time")
    sink = CollectSink()
    source = job.source(CollectionSource(["x", "y"])).key_by(lambda v: v)
    source.process(ProcessingTimeEcho()).sink(sink)
    await execute_job(job, local_config(tmp_path))
    assert sorted(sink.values) == [("fired", "x"), ("fired", "y")]


async def test_interval_join_pairs_records_within_the_bounds(tmp_path: Path) -> None:
    job = Job("interval-join")
    sink = CollectSink(timestamps=True)
    clicks = job.source(CollectionSource([("u1", 1000), ("u2", 1000), ("u1", 5000)]), "c", BY_TS)
    views = job.source(
        CollectionSource([("u1", 500), ("u1", 1200), ("u2", 3000), ("u1", 4900)]), "v", BY_TS
    )
    (
        clicks.key_by(lambda r: r[0])
        .interval_join(views.key_by(lambda r: r[0]), -600, 300)
        .process(lambda c, v: (c[0], c[1], v[1]))
        .sink(sink)
    )
    await run(job, tmp_path)
    assert sorted(sink.values) == [
        (("u1", 1000, 500), 1000),
        (("u1", 1000, 1200), 1200),
        (("u1", 5000, 4900), 5000),
    ]


async def test_window_join_crosses_both_sides_of_each_window(tmp_path: Path) -> None:
    job = Job("window-join")
    sink = CollectSink()
    left = job.source(CollectionSource([("k", 100), ("k", 200), ("j", 300)]), "l", BY_TS)
    right = job.source(CollectionSource([("k", 900), ("k", 1100), ("j", 400)]), "r", BY_TS)
    (
        left.join(right)
        .where(lambda r: r[0])
        .equal_to(lambda r: r[0])
        .window(TumblingEventTimeWindows(1000))
        .apply(lambda a, b: (a[0], a[1], b[1]))
        .sink(sink)
    )
    await run(job, tmp_path, **{"parallelism.default": 2})
    assert sorted(sink.values) == [("j", 300, 400), ("k", 100, 900), ("k", 200, 900)]


async def test_idle_source_subtask_does_not_hold_back_event_time(tmp_path: Path) -> None:
    job = Job("idle")
    sink = CollectSink()
    # Parallelism 3 over one record: two source subtasks have nothing to read.
    (
        job.source(CollectionSource([("a", 10)]), watermarks=BY_TS)
        .key_by(lambda r: r[0])
        .process(Alarm())
        .sink(sink)
    )
    await execute_job(job, local_config(tmp_path), parallelism=3)
    assert sink.values == [("a", 10, 510, 510)]


class CountRecords(AggregateFunction):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: object, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator

    def merge(self, a: int, b: int) -> int:
        return a + b


async def test_session_windows_merge_aggregate_accumulators(tmp_path: Path) -> None:
    job = Job("session-aggregate")
    sink = CollectSink(timestamps=True)
    records = [("a", 100), ("a", 700), ("a", 450), ("a", 5000)]
    (
        timed_source(job, records, out_of_orderness=1000)
        .key_by(lambda r: r[0])
        .window(EventTimeSessionWindows(400))
        .aggregate(CountRecords())
        .sink(sink)
    )
    await run(job, tmp_path)
    assert sorted(sink.values) == [(1, 5399), (3, 1099)]
