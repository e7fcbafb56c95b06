"""The job manager's savepoint requests when the job's leading task manager is lost before it
reported the outcome: the savepoint's directory tells. A stop whose savepoint completed leaves the
job CANCELED (not restarted: its sinks may have committed the savepoint's output); one whose
savepoint is not there fails with the reason and the job restarts from its latest checkpoint."""

import asyncio
import json
from pathlib import Path

import pytest

from streamlet.cluster.ha import HaStore
from streamlet.cluster.jobmanager import JobManager
from streamlet.cluster.model import Artifact, JobStatus, TaskManagerInfo
from streamlet.cluster.savepoint_requests import SavepointFailed
from streamlet.config import Configuration

ENDLESS = Path(__file__).parent / "jobs" / "endless.py"


async def running_job(tmp_path: Path) -> tuple[JobManager, str]:
    """A job manager (HA metadata under `tmp_path`) with one task manager running one job."""
    config = Configuration({"cluster.heartbeat.timeout": "1s"})
    manager = JobManager(config, HaStore(tmp_path.as_uri(), {}))
    record = await manager.submit(
        Artifact("file", file_name="endless.py"), ENDLESS.read_bytes(), 1, {}
    )
    await manager.register(TaskManagerInfo("tm", "127.0.0.1", 1, None, "127.0.0.1:1"), [])
    report = {"deployment_id": record.deployment_id, "job_id": record.id, "status": "RUNNING"}
    answer = await manager.heartbeat("tm", [report])
    assert answer is not None and manager.job(record.id).status is JobStatus.RUNNING
    return manager, record.id


async def lose_the_task_manager(manager: JobManager) -> None:
    manager.started -= 60
    manager.task_managers["tm"].last_heartbeat -= 60
    await manager.check_task_managers()


def write_metadata(directory: Path) -> None:
    directory.mkdir(parents=True)
    metadata = {
        "format": 1,
        "job": "endless",
        "checkpoint_id": 3,
        "max_parallelism": 128,
        "kind": "savepoint",
        "operators": {},
    }
    (directory / "_metadata").write_text(json.dumps(metadata))


async def test_a_completed_stop_savepoint_cancels_the_job_a_missing_one_fails_over(
    tmp_path: Path,
) -> None:
    manager, job_id = await running_job(tmp_path / "one")
    target = tmp_path / "stopped"
    stop = asyncio.create_task(manager.savepoint(job_id, target.as_uri(), "native", stop=True))
    await asyncio.sleep(0)
    answer = await manager.heartbeat("tm", [])
    assert answer is not None
    assert [request["url"] for request in answer["savepoints"]] == [target.as_uri()]
    write_metadata(target)  # the savepoint completed, the task manager died before it reported
    await lose_the_task_manager(manager)
    record = await asyncio.wait_for(stop, 5)
    assert record["path"] == target.as_uri() and record["stop"]
    job = manager.job(job_id)
    assert job.status is JobStatus.CANCELED and job.failovers == 0
    assert [s["path"] for s in job.savepoints] == [target.as_uri()]

    manager, job_id = await running_job(tmp_path / "two")
    taken = asyncio.create_task(manager.savepoint(job_id, None, "canonical", stop=True))
    await asyncio.sleep(0)
    await lose_the_task_manager(manager)
    with pytest.raises(SavepointFailed, match="failed over before the savepoint completed"):
        await asyncio.wait_for(taken, 5)
    job = manager.job(job_id)
    assert job.status is JobStatus.RESTARTING and job.failovers == 1 and job.savepoints == []


async def test_a_completed_savepoint_in_the_default_directory_is_found_by_its_request(
    tmp_path: Path,
) -> None:
    manager, job_id = await running_job(tmp_path)
    taken = asyncio.create_task(manager.savepoint(job_id, None, "native", stop=False))
    await asyncio.sleep(0)
    answer = await manager.heartbeat("tm", [])
    assert answer is not None
    (request,) = answer["savepoints"]
    checkpoints = Path(manager.job(job_id).config["checkpoint.dir"].removeprefix("file://"))
    directory = checkpoints / "savepoints" / "endless" / f"savepoint-7-{request['request_id']}"
    write_metadata(directory)
    await lose_the_task_manager(manager)
    record = await asyncio.wait_for(taken, 5)
    assert record["path"] == directory.as_uri() and not record["stop"]
    assert manager.job(job_id).status is JobStatus.RESTARTING  # not a stop: it restarts
