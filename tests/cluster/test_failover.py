"""Faults with real processes: a task manager SIGKILLed under load, and a job manager SIGKILLed
and restarted; in both the job ends with exactly-once state and output, and the job's counters
(REST and Prometheus) add up its attempts."""

import re
from pathlib import Path

from tests.cluster.exactly_once import JOB, assert_exactly_once
from tests.cluster.harness import Cluster
from tests.support.processes import ProcessRunner

RECORDS = 12_000


def _cluster(process_runner: ProcessRunner, tmp_path: Path) -> tuple[Cluster, Path]:
    output = tmp_path / "output"
    cluster = Cluster(
        process_runner,
        tmp_path,
        KEYED_COUNT_OUTPUT=str(output),
        KEYED_COUNT_RECORDS=str(RECORDS),
        KEYED_COUNT_RATE="2500",
    )
    cluster.start_jobmanager()
    return cluster, output


def test_a_killed_task_manager_fails_over_from_the_latest_checkpoint(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster, output = _cluster(process_runner, tmp_path)
    cluster.start_taskmanager(slots=2)
    cluster.start_taskmanager(slots=2)
    job_id = cluster.submit(JOB, "-p", "2", "-D", "checkpoint.interval=300ms")
    job = cluster.wait_job(job_id, lambda j: (j["latest_checkpoint"] or 0) >= 2)
    assert job["metrics"]["records_in"] < RECORDS  # killed under load, not after the end
    (victim,) = job["task_managers"]
    cluster.task_managers[victim].kill()
    counted = cluster.job(job_id)["metrics"]  # the first attempt's last report

    restarted = cluster.wait_job(job_id, lambda j: j["failovers"] == 1 and j["task_managers"])
    assert victim not in restarted["task_managers"]
    for key in ("records_in", "checkpoints"):  # the counters do not fall back
        assert restarted["metrics"][key] >= counted[key], (key, restarted["metrics"], counted)
    job = cluster.wait_job(job_id, lambda j: j["status"] == "FINISHED", timeout=60)
    assert job["attempt"] == 2
    assert_exactly_once(output, RECORDS)
    # the second attempt read from the checkpoint on, the first before: both are counted
    assert job["metrics"]["records_in"] >= RECORDS
    assert job["metrics"]["checkpoints"] > counted["checkpoints"]
    _, scraped = cluster.api("GET", "/metrics")
    (records_in,) = re.findall(
        rf'^streamlet_job_records_in_total{{job_id="{job_id}",job_name="keyed-count"}} (\S+)$',
        scraped,
        re.MULTILINE,
    )
    assert float(records_in) == job["metrics"]["records_in"]
    assert ',job="' not in scraped  # Prometheus's own target label stays free
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert [m["id"] for m in managers["task_managers"]] == restarted["task_managers"]


def test_a_restarted_jobmanager_recovers_the_running_job(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster, output = _cluster(process_runner, tmp_path)
    tm = cluster.start_taskmanager(slots=2)
    job_id = cluster.submit(JOB, "-p", "2", "-D", "checkpoint.interval=300ms")
    cluster.wait_job(job_id, lambda j: (j["latest_checkpoint"] or 0) >= 1)
    cluster.jobmanager.kill()
    cluster.start_jobmanager()  # same port and HA directory

    job = cluster.job(job_id)
    assert job["status"] in ("RECOVERING", "RUNNING", "FINISHED")
    job = cluster.wait_job(job_id, lambda j: j["status"] == "FINISHED", timeout=60)
    assert (job["attempt"], job["failovers"]) == (1, 0)  # the running deployment was adopted
    assert "registered" in cluster.task_managers[tm].output()
    assert_exactly_once(output, RECORDS)
