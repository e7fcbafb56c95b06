"""A job spread over task managers: records cross processes over TCP (key-group partitioning,
so every pair of subtasks talks), barriers align across the network, the output is exactly once,
and a SIGKILLed task manager restarts the whole job from its latest checkpoint."""

from pathlib import Path

import pytest

from tests.cluster.exactly_once import JOB, assert_exactly_once
from tests.cluster.harness import Cluster
from tests.support.processes import ProcessRunner

RECORDS = 12_000


def _spread_cluster(
    process_runner: ProcessRunner, tmp_path: Path, rate: str
) -> tuple[Cluster, Path]:
    output = tmp_path / "output"
    cluster = Cluster(
        process_runner,
        tmp_path,
        KEYED_COUNT_OUTPUT=str(output),
        KEYED_COUNT_RECORDS=str(RECORDS),
        KEYED_COUNT_RATE=rate,
    )
    cluster.start_jobmanager()
    return cluster, output


def test_a_job_spans_task_managers_with_exactly_once_output(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster, output = _spread_cluster(process_runner, tmp_path, rate="100000")
    tms = {cluster.start_taskmanager(slots=1), cluster.start_taskmanager(slots=1)}
    job_id = cluster.submit(
        JOB,
        "-p",
        "2",
        "-D",
        "checkpoint.interval=200ms",
        "-D",
        "pipeline.channel-capacity=2",
        "-D",
        "pipeline.batch-size=64",
    )
    job = cluster.wait_job(job_id, lambda j: j["status"] in ("FINISHED", "FAILED"), timeout=60)
    assert job["status"] == "FINISHED", job
    assert job["failovers"] == 0 and job["latest_checkpoint"] is not None
    for tm in tms:  # each ran one slot of the only attempt
        assert f"starting deployment {job_id}-1 " in cluster.task_managers[tm].output()
    assert job["metrics"]["records_in"] == RECORDS
    assert_exactly_once(output, RECORDS)


@pytest.mark.parametrize("victim", [0, 1], ids=["leader", "follower"])
def test_a_killed_task_manager_restarts_a_spread_job_with_exact_counts(
    process_runner: ProcessRunner, tmp_path: Path, victim: int
) -> None:
    cluster, output = _spread_cluster(process_runner, tmp_path, rate="2500")
    cluster.start_taskmanager(slots=1)
    cluster.start_taskmanager(slots=1)
    job_id = cluster.submit(JOB, "-p", "2", "-D", "checkpoint.interval=300ms")
    job = cluster.wait_job(job_id, lambda j: (j["latest_checkpoint"] or 0) >= 2)
    assert len(job["task_managers"]) == 2
    spare = cluster.start_taskmanager(slots=1)
    cluster.task_managers[job["task_managers"][victim]].kill()  # slot 0's task manager leads

    restarted = cluster.wait_job(
        job_id, lambda j: j["failovers"] >= 1 and j["status"] == "RUNNING", timeout=30
    )
    assert spare in restarted["task_managers"]
    job = cluster.wait_job(job_id, lambda j: j["status"] == "FINISHED", timeout=60)
    assert_exactly_once(output, RECORDS)
