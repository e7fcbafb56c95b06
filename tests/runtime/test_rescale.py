"""Restoring with another parallelism (a rescale) in one process: keyed state moves with its key
groups, sources hand every record out once, every old FileSink writer's pending files are
committed once, and the state of dropped checkpoints of the old parallelism is released once.
(Restoring from a URL, uid matching and bad input: tests/runtime/test_restore.py; with real
processes and SIGKILL: tests/runtime/test_rescale_faults.py.)"""

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from statebackend import KeyedStateBackend, StateHandle
from streamlet import Job
from streamlet.checkpoint import CheckpointStorage
from streamlet.connectors import (
    CollectionSource,
    DataGeneratorSource,
    FileSink,
    FileSource,
    KafkaSource,
    Source,
)
from streamlet.executor import JobResult, execute_job
from streamlet.functions import RuntimeContext
from streamlet.metrics import JobMetrics
from tests.runtime.support import CollectSink, HeldSource, local_config, progress_or_end
from tests.runtime.test_checkpoints import (
    counting_job,
    expected,
    final_counts,
    referenced_state_files,
    state_files,
)


async def run_held(
    job: Job, config: dict[str, Any], parallelism: int, records: int, **options: Any
) -> JobResult:
    """Run `job` (whose source is held) until it read `records`, then stop it: a final
    checkpoint at the sources' positions."""
    stop = asyncio.Event()
    metrics = JobMetrics()
    run = asyncio.create_task(
        execute_job(job, config, parallelism=parallelism, stop=stop, metrics=metrics, **options)
    )
    await progress_or_end(lambda: metrics.records_in >= records, run)
    stop.set()
    result = await run
    assert result.records_in >= records
    return result


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_keyed_counts_stay_exact_from_2_to_3_to_1_subtasks(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[tuple[str, int]] = []
    release = KeyedStateBackend.release

    def counting_release(self: KeyedStateBackend, handle: StateHandle, retained: Any) -> None:
        released.append((handle.scope, handle.checkpoint_id))
        release(self, handle, retained)

    monkeypatch.setattr(KeyedStateBackend, "release", counting_release)
    count, limit = 6000, 1000
    config = local_config(tmp_path, **{"state.backend": backend, "checkpoint.retained": 1})
    sink = CollectSink()

    def held(source: Source) -> HeldSource:
        return HeldSource(source, limit=limit)

    # 2 subtasks read 1000 each; then 3 (the third has no split: it is idle) read 1000 each of
    # the 2 splits; then 1 subtask, from the URL of the latest checkpoint, reads the rest.
    first = await run_held(counting_job("rescale", sink, count, held=held), config, 2, 2 * limit)
    second = await run_held(counting_job("rescale", sink, count, held=held), config, 3, 2 * limit)
    assert second.restored_checkpoint == 1 and first.records_in == second.records_in == 2 * limit
    storage = CheckpointStorage(config["checkpoint.dir"], "rescale", {})
    third = await execute_job(
        counting_job("rescale", sink, count),
        config,
        parallelism=1,
        restore_from=storage.url_of(storage.checkpoint_ids()[0]),
    )
    assert third.restored_checkpoint == 2 and third.records_in == count - 4 * limit
    assert final_counts(sink) == dict(expected(count))
    assert len(sink.values) == count  # every update once
    # Checkpoints 1 (2 subtasks) and 2 (3 subtasks) fell out of retention: each of their keyed
    # snapshots was released exactly once, and no state file is left that no checkpoint uses.
    assert sorted(released) == sorted(
        [("rescale/counter/0", 1), ("rescale/counter/1", 1)]
        + [(f"rescale/counter/{i}", 2) for i in range(3)]
    )
    assert state_files(tmp_path / "state" / "rescale") == referenced_state_files(storage)


ITEMS = [f"item-{i}" for i in range(1000)]


def file_source(tmp_path: Path) -> Source:
    directory = tmp_path / "in"
    directory.mkdir(exist_ok=True)
    for f in range(5):
        lines = ITEMS[f * 200 : (f + 1) * 200]
        (directory / f"{f}.txt").write_text("".join(f"{line}\n" for line in lines))
    return FileSource(str(directory))


SOURCES: dict[str, Callable[[Path], Source]] = {
    "collection": lambda tmp_path: CollectionSource(ITEMS),
    "datagen": lambda tmp_path: DataGeneratorSource(lambda i, rng: ITEMS[i], count=len(ITEMS)),
    "files": file_source,
}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 1)])
async def test_sources_hand_out_every_record_once_across_a_rescale(
    tmp_path: Path, source: str, before: int, after: int
) -> None:
    limit = 150  # per reader: every reader holds more than that
    config = local_config(tmp_path)
    sink = CollectSink()
    for parallelism, held in ((before, True), (after, False)):
        job = Job("sources")
        make = SOURCES[source](tmp_path)
        job.source(HeldSource(make, limit=limit) if held else make, name="items").sink(sink)
        if held:
            await run_held(job, config, parallelism, limit * before)
        else:
            await execute_job(job, config, parallelism=parallelism)
    assert Counter(sink.values) == Counter(ITEMS)


def test_kafka_offsets_go_to_the_subtask_that_reads_their_partition() -> None:
    source = KafkaSource("topic", "localhost:9092")
    old = [{"0": 5, "2": 7, "4": 1}, {"1": 3, "3": 4}]
    assert source.redistribute(old, 3) == [{"0": 5, "3": 4}, {"1": 3, "4": 1}, {"2": 7}]
    assert source.redistribute(old, 1) == [{"0": 5, "2": 7, "4": 1, "1": 3, "3": 4}]


def committed_lines(directory: Path) -> list[str]:
    return [line for p in sorted(directory.glob("part-*")) for line in p.read_text().split()]


@pytest.mark.parametrize("after", [3, 1])
async def test_every_old_file_sink_writers_pending_files_are_committed_once(
    tmp_path: Path, after: int
) -> None:
    out = tmp_path / "out"
    sink = FileSink(str(out))
    states = []
    for index in range(2):
        writer = sink.create_writer(RuntimeContext("job", "files", index, 2))
        await writer.open(None)
        writer.write(f"committed-{index}", None)
        await writer.snapshot(1)
        await writer.notify_checkpoint_complete(1)
        writer.write(f"pending-{index}", None)
        states.append(await writer.snapshot(2))  # the checkpoint restored: not notified yet
        writer.write(f"after-{index}", None)
        await writer.snapshot(3)  # a checkpoint that never completed
    shares = sink.redistribute(states, after)
    writers = [sink.create_writer(RuntimeContext("job", "files", i, after)) for i in range(after)]
    for writer, share in zip(writers, shares, strict=True):
        await writer.open(share)
    assert sorted(committed_lines(out)) == sorted(
        ["committed-0", "committed-1", "pending-0", "pending-1"]
    )
    assert not list(out.glob(".*"))  # the pending files of checkpoint 3 are gone
    for index, writer in enumerate(writers):  # the new writers never overwrite a part file
        writer.write(f"new-{index}", None)
        await writer.snapshot(4)
        await writer.notify_checkpoint_complete(4)
    assert sorted(committed_lines(out)) == sorted(
        ["committed-0", "committed-1", "pending-0", "pending-1"]
        + [f"new-{i}" for i in range(after)]
    )
