"""Savepoints of a job running in this process (`JobControl`): an intermediate savepoint commits
nothing, a stop with a savepoint ends the job with its sinks committed, a savepoint that cannot be
written fails alone (nothing left behind; a failed stop leaves the job running, its sources read
on), and the job restored from it (at another parallelism, in another backend) counts exactly.
(On a cluster: tests/cluster/test_savepoints.py.)"""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from streamlet import Job
from streamlet.connectors import DataGeneratorSource, FileSink
from streamlet.errors import SavepointError
from streamlet.executor import execute_job
from streamlet.metrics import JobMetrics
from streamlet.savepoints import JobControl
from tests.runtime.jobs.keyed_count import Count, word
from tests.runtime.support import HeldSource, local_config, progress_or_end
from tests.runtime.test_faults import committed_updates, expected_counts

RECORDS = 3000


def counting(output: Path, limit: int | None = None) -> Job:
    """Words counted per key into a FileSink; the source holds after `limit` records a subtask."""
    source = DataGeneratorSource(word, count=RECORDS, seed=3)
    job = Job("keyed-count")
    (
        job.source(HeldSource(source, limit) if limit else source, name="words")
        .key_by(lambda w: w)
        .process(Count(), name="count")
        .sink(FileSink(str(output)), name="files")
    )
    return job


def assert_exact(output: Path) -> None:
    assert {key: sorted(counts) for key, counts in committed_updates(output).items()} == {
        key: list(range(1, n + 1)) for key, n in expected_counts(RECORDS).items()
    }


async def started(
    job: Job, config: dict[str, Any], parallelism: int, records: int
) -> tuple[JobControl, "asyncio.Task[Any]", JobMetrics]:
    """The job running (with a control), once it read `records`."""
    control, metrics = JobControl(), JobMetrics()
    run = asyncio.create_task(
        execute_job(job, config, parallelism=parallelism, metrics=metrics, control=control)
    )
    await progress_or_end(lambda: metrics.records_in >= records, run)
    assert not run.done(), run
    return control, run, metrics


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_an_intermediate_savepoint_commits_nothing_and_a_stop_savepoint_ends_the_job(
    tmp_path: Path, backend: str
) -> None:
    output = tmp_path / "out"
    config = local_config(tmp_path, **{"state.backend": backend})  # no periodic checkpoints
    control, run, _ = await started(counting(output, limit=500), config, 2, 1000)
    intermediate = await control.savepoint(None, "native")
    assert intermediate.startswith((tmp_path / "checkpoints").as_uri() + "/savepoints/")
    assert not list(output.glob("part-*"))  # pending until a checkpoint completes
    assert list(output.glob(".part-*.pending"))

    final = (tmp_path / "final").as_uri()
    assert await control.stop_with_savepoint(final, "native") == final
    result = await run
    assert result.checkpoints == 0  # the savepoint was the final round, no checkpoint followed
    assert list(output.glob("part-*")) and not list(output.glob(".part-*.pending"))
    with pytest.raises(SavepointError, match="not running"):
        await control.savepoint(None, "native")

    restored = await execute_job(
        counting(output),
        local_config(tmp_path / "b", **{"state.backend": backend}),
        parallelism=3,
        restore_from=final,
    )
    assert (
        restored.restored_checkpoint
        == json.loads((tmp_path / "final" / "_metadata").read_text())["checkpoint_id"]
    )
    assert_exact(output)


async def test_a_savepoint_that_cannot_be_written_fails_alone_and_the_job_goes_on(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    unwritable = (blocker / "savepoint").as_uri()
    config = local_config(tmp_path, **{"state.backend": "rocksdb", "checkpoint.interval": "50ms"})
    control, run, metrics = await started(counting(output, limit=500), config, 2, 1000)

    with pytest.raises(SavepointError, match=r"operator 'count' .*NotADirectoryError"):
        await control.savepoint(unwritable, "canonical")
    with pytest.raises(SavepointError, match="NotADirectoryError"):
        await control.stop_with_savepoint(unwritable, "native")
    assert blocker.read_text() == "not a directory"
    # The failed stop left the job running: its sources read on, its checkpoints go on.
    checkpoints = metrics.checkpoints
    async with asyncio.timeout(30):  # sources that stayed stopped would take no checkpoint
        await progress_or_end(lambda: metrics.checkpoints >= checkpoints + 2, run)
    assert not run.done()

    saved = (tmp_path / "saved").as_uri()
    assert await control.stop_with_savepoint(saved, "canonical") == saved
    await run
    restored = local_config(tmp_path / "b", **{"state.backend": "memory"})
    await execute_job(counting(output), restored, parallelism=1, restore_from=saved)
    assert_exact(output)
