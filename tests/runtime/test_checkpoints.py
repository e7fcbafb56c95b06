"""Checkpoints in one process: metadata on the DFS, retention, stop-and-resume, restarts."""

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

from streamlet import AggregateFunction, Job, TumblingEventTimeWindows, WatermarkStrategy
from streamlet.checkpoint import CheckpointStorage
from streamlet.connectors import DataGeneratorSource, Source
from streamlet.errors import OperatorError
from streamlet.executor import execute_job
from streamlet.metrics import JobMetrics
from tests.runtime.support import CollectSink, HeldSource, local_config, progress_or_end
from tests.support.checkpoints import referenced_files

KEYS = [f"k{i}" for i in range(20)]


def key_of(index: int, rng: random.Random) -> str:
    return rng.choice(KEYS)


def expected(count: int) -> Counter:
    source = DataGeneratorSource(key_of, seed=9)
    return Counter(source.record(i) for i in range(count))


def counting_job(
    name: str,
    sink: CollectSink,
    count: int,
    rate: float | None = None,
    held: Callable[[Source], HeldSource] | None = None,
) -> Job:
    """Counts per key of `count` generated keys; `held` wraps the source (see `HeldSource`)."""
    job = Job(name)
    source: Source = DataGeneratorSource(key_of, rate=rate, count=count, seed=9)
    (
        job.source(source if held is None else held(source), name="keys")
        .map(lambda k: (k, 1), name="pair")
        .key_by(lambda p: p[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]), name="count")
        .uid("counter")
        .sink(sink, name="collect")
    )
    return job


def final_counts(sink: CollectSink) -> dict[str, int]:
    final: dict[str, int] = {}
    for key, count in sink.values:
        final[key] = max(count, final.get(key, 0))
    return final


async def test_metadata_holds_source_positions_and_state_handles(tmp_path: Path) -> None:
    sink = CollectSink()
    config = local_config(tmp_path, **{"checkpoint.interval": "50ms", "checkpoint.retained": 2})
    job = counting_job("metadata", sink, count=3000, rate=20_000)
    result = await execute_job(job, config, parallelism=2)
    storage = CheckpointStorage(config["checkpoint.dir"], "metadata", {})
    ids = storage.checkpoint_ids()
    assert len(ids) == 2 and ids[0] == result.checkpoints
    metadata = storage.latest()
    assert metadata is not None and metadata["checkpoint_id"] == ids[0]
    operators = metadata["operators"]
    # Each source subtask's split [next index, stride]: past its 1500 records of 3000.
    assert [s["position"] for s in operators["1-keys"]["subtasks"]] == [[[3000, 2]], [[3001, 2]]]
    handles = operators["counter"]["subtasks"]
    assert [h["backend"]["scope"] for h in handles] == ["metadata/counter/0", "metadata/counter/1"]
    assert handles[0]["backend"]["key_groups"] == [0, 63]


async def test_torn_metadata_is_skipped_when_looking_for_the_latest(tmp_path: Path) -> None:
    sink = CollectSink()
    config = local_config(tmp_path)
    await execute_job(counting_job("torn", sink, count=100), config)
    storage = CheckpointStorage(config["checkpoint.dir"], "torn", {})
    good = storage.checkpoint_ids()[0]
    fs = fsspec.filesystem("file")
    fs.makedirs(storage.path(good + 1))
    fs.pipe_file(f"{storage.path(good + 1)}/_metadata", b'{"format": 1, "checkp')
    assert storage.latest()["checkpoint_id"] == good  # type: ignore[index]


async def test_stop_takes_a_final_checkpoint_and_a_rerun_continues_exactly(
    tmp_path: Path,
) -> None:
    count = 4000
    config = local_config(tmp_path, **{"checkpoint.interval": "100ms", "state.backend": "rocksdb"})
    sink = CollectSink()
    stop = asyncio.Event()
    metrics = JobMetrics()
    # Held at half the records: the job cannot end before the stop, however slow the machine.
    first_job = counting_job(
        "stop", sink, count, rate=8000, held=lambda s: HeldSource(s, limit=count // 2)
    )
    run = asyncio.create_task(execute_job(first_job, config, stop=stop, metrics=metrics))
    await progress_or_end(lambda: metrics.records_in >= count // 4, run)
    stop.set()
    first = await run
    assert count // 4 <= first.records_in <= count // 2
    second = await execute_job(counting_job("stop", sink, count), config)
    assert second.restored_checkpoint == first.checkpoints
    assert first.records_in + second.records_in == count
    assert final_counts(sink) == dict(expected(count))
    assert len(sink.values) == count  # the collecting sink saw every update once


async def test_restart_strategy_restores_the_latest_checkpoint(tmp_path: Path) -> None:
    count = 3000
    failures = []
    seen = Counter[str]()

    def fail_once(pair: tuple[str, int]) -> tuple[str, int]:
        seen["records"] += 1
        if not failures and seen["records"] > count // 2:
            failures.append(pair)
            raise RuntimeError("transient")
        return pair

    sink = CollectSink()

    job = Job("restarts")
    (
        job.source(DataGeneratorSource(key_of, rate=10_000, count=count, seed=9), name="keys")
        .map(lambda k: (k, 1))
        .map(fail_once, name="flaky")
        .key_by(lambda p: p[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1]))
        .sink(sink)
    )
    config = local_config(
        tmp_path,
        **{"checkpoint.interval": "50ms", "restart.attempts": 1, "restart.delay": "10ms"},
    )
    result = await execute_job(job, config, parallelism=2)
    assert result.restarts == 1 and failures
    assert final_counts(sink) == dict(expected(count))


async def test_a_failure_beyond_the_restart_attempts_is_raised(tmp_path: Path) -> None:
    job = Job("always-fails")
    (
        job.source(DataGeneratorSource(key_of, count=10, seed=9))
        .map(lambda k: 1 / 0, name="divide")
        .sink(CollectSink())
    )
    config = local_config(tmp_path, **{"restart.attempts": 2, "restart.delay": "1ms"})
    with pytest.raises(OperatorError, match="operator 'divide' failed at .* on record 'k"):
        await execute_job(job, config)


async def test_checkpoints_on_s3(tmp_path: Path, s3_bucket) -> None:
    config = {
        "checkpoint.dir": s3_bucket.path("chk"),
        "state.dir": s3_bucket.path("state"),
        "dfs.storage-options": json.dumps(s3_bucket.storage_options),
        "checkpoint.interval": 0,
    }
    sink = CollectSink()
    await execute_job(counting_job("on-s3", sink, 500), config)
    rerun = await execute_job(counting_job("on-s3", sink, 500), config)
    assert rerun.restored_checkpoint == 1 and rerun.records_in == 0
    assert final_counts(sink) == dict(expected(500))


async def test_windows_and_timers_survive_a_stop_and_restore(tmp_path: Path) -> None:
    count = 6000

    def windowed_job(sink: CollectSink, limit: int | None = None) -> Job:
        """The windowed count; with `limit`, its source holds after that many records."""
        job = Job("windows-restore")
        source: Source = DataGeneratorSource(
            lambda i, rng: (rng.choice(KEYS), i), rate=12_000, count=count
        )
        if limit is not None:
            source = HeldSource(source, limit=limit)
        (
            job.source(source, watermarks=WatermarkStrategy.monotonous_timestamps(lambda r: r[1]))
            .key_by(lambda r: r[0])
            .window(TumblingEventTimeWindows(500))
            .aggregate(CountRecords())
            .set_parallelism(2)
            .sink(sink)
        )
        return job

    config = local_config(tmp_path, **{"checkpoint.interval": "50ms", "state.backend": "rocksdb"})
    sink = CollectSink(timestamps=True)
    stop = asyncio.Event()
    metrics = JobMetrics()
    first_job = windowed_job(sink, limit=count // 2)  # cannot fire every window before the stop
    run = asyncio.create_task(execute_job(first_job, config, stop=stop, metrics=metrics))
    await progress_or_end(lambda: metrics.records_in >= count // 3, run)
    stop.set()
    await run
    assert count // 3 <= metrics.records_in <= count // 2
    before_restore = len(sink.values)
    await execute_job(windowed_job(sink), config)
    source = DataGeneratorSource(lambda i, rng: (rng.choice(KEYS), i))
    records = [source.record(i) for i in range(count)]
    windows = Counter((key, ts // 500 * 500 + 499) for key, ts in records)
    assert 0 < before_restore < len(windows)
    assert sorted(sink.values) == sorted((n, end) for (_, end), n in windows.items())


class CountRecords(AggregateFunction):
    def create_accumulator(self) -> int:
        return 0

    def add(self, value: object, accumulator: int) -> int:
        return accumulator + 1

    def get_result(self, accumulator: int) -> int:
        return accumulator

    def merge(self, a: int, b: int) -> int:
        return a + b


def state_files(root: Path) -> set[str]:
    return {path.as_uri() for path in root.rglob("*") if path.is_file()}


def referenced_state_files(storage: CheckpointStorage) -> set[str]:
    return {
        path
        for checkpoint_id in storage.checkpoint_ids()
        for path in referenced_files(storage.read(checkpoint_id))
    }


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_state_of_dropped_checkpoints_is_released(tmp_path: Path, backend: str) -> None:
    count = 6000
    config = local_config(
        tmp_path,
        **{"checkpoint.interval": "30ms", "checkpoint.retained": 2, "state.backend": backend},
    )
    stop = asyncio.Event()
    metrics = JobMetrics()
    sink = CollectSink()
    # The job cannot end before 4 checkpoints, so that 2 of them fall out of retention.
    first_job = counting_job(
        "retain",
        sink,
        count,
        rate=20_000,
        held=lambda s: HeldSource(s, release=lambda: metrics.checkpoints >= 4),
    )
    run = asyncio.create_task(execute_job(first_job, config, stop=stop, metrics=metrics))
    await progress_or_end(lambda: metrics.checkpoints >= 4, run)
    stop.set()
    await run
    assert metrics.checkpoints >= 4
    storage = CheckpointStorage(config["checkpoint.dir"], "retain", {})
    assert len(storage.checkpoint_ids()) == 2
    state_root = tmp_path / "state" / "retain"
    assert state_files(state_root) == referenced_state_files(storage)
    # A rerun restores the latest checkpoint, and releases the state of the checkpoints the
    # first run left behind once they fall out of retention.
    first_ids = storage.checkpoint_ids()
    second = await execute_job(counting_job("retain", sink, count), config)
    assert second.restored_checkpoint == first_ids[0]
    assert storage.checkpoint_ids()[1:] == first_ids[:1]  # the older one left by the first run
    assert final_counts(sink) == dict(expected(count))
    assert state_files(state_root) == referenced_state_files(storage)
