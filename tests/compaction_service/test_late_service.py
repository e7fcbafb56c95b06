"""A job whose `job:` compaction address names no running service when it starts compacts
locally, and offloads once the service starts, without a restart: with real processes, for a job
on a task manager (its endpoint directory answers) and for `streamlet run` (the job manager's
REST API answers)."""

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster
from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, ProcessRunner

JOB = Path(__file__).resolve().parents[1] / "cluster" / "jobs" / "lsm_writes.py"
WRITER = (
    "-D", "state.backend=lsm",
    "-D", "lsm.memtable_bytes=65536",
    "-D", "lsm.l0_compaction_trigger=2",
    "-D", "compaction.mode=remote",
    "-D", "compaction.service.address=job:compaction-service",
    "-D", "compaction.client.resolve-interval=1s",
    "-D", "checkpoint.interval=0",
)  # fmt: skip


@pytest.fixture
def cluster(process_runner: ProcessRunner, tmp_path: Path) -> Iterator[Cluster]:
    """A job manager (real process), no task manager yet."""
    running = Cluster(process_runner, tmp_path)
    running.start_jobmanager()
    yield running


def _start_compaction_service(cluster: Cluster) -> float:
    """A compaction service job on a task manager of its own; when it registered its endpoint."""
    cluster.start_taskmanager(slots=1)
    job = cluster.submit(
        "compaction_service",
        "-D", f"compaction.service.port={free_port()}",
        "-D", "compaction.service.workers=1",
        "-D", "checkpoint.interval=0",
    )  # fmt: skip
    cluster.wait_job(job, lambda j: j["status"] == "RUNNING" and j["endpoints"], timeout=60)
    return time.monotonic()


def _compactions(job: dict) -> tuple[int, int]:
    metrics = job.get("metrics", {})
    return metrics.get("compactions_local", 0), metrics.get("compactions_remote", 0)


def test_a_job_on_a_task_manager_offloads_once_the_service_starts(cluster: Cluster) -> None:
    cluster.start_taskmanager(slots=1)
    writer = cluster.submit(str(JOB), *WRITER)
    cluster.wait_job(writer, lambda j: _compactions(j)[0] >= 2, timeout=60)  # no service: local

    registered = _start_compaction_service(cluster)
    offloading = cluster.wait_job(writer, lambda j: _compactions(j)[1] >= 1, timeout=60)
    assert offloading["status"] == "RUNNING" and offloading["failovers"] == 0
    # A bound, not a speed test: heartbeats (1 s), resolve interval (1 s), the next compaction.
    assert time.monotonic() - registered < 30
    assert cluster.cli("cancel", writer).returncode == 0


PROGRESS = re.compile(r"compactions local (\d+) remote (\d+)")


def _progress(run: ManagedProcess) -> tuple[int, int]:
    """The figures of the run's latest progress line (0, 0 before the first)."""
    lines = PROGRESS.findall(run.output())
    return (int(lines[-1][0]), int(lines[-1][1])) if lines else (0, 0)


def _wait(condition, timeout: float, what: str, run: ManagedProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.running, run.describe(f"streamlet run ended before {what}")
        assert time.monotonic() < deadline, run.describe(f"{what} did not happen in {timeout} s")
        time.sleep(0.2)


def test_streamlet_run_offloads_once_the_service_starts(cluster: Cluster) -> None:
    run = cluster.runner.python(
        module="streamlet.cli",
        args=[
            "run",
            str(JOB),
            *WRITER,
            "-D",
            f"state.dir={(cluster.dir / 'state').as_uri()}",  # the service may write there
            "-D",
            f"checkpoint.dir={(cluster.dir / 'checkpoints').as_uri()}",
            "-D",
            "progress.interval=500ms",
        ],  # fmt: skip
        name="streamlet-run",
        env=cluster.env(),  # cluster.jobmanager and cluster.token: where job: is looked up
    )
    _wait(lambda: _progress(run)[0] >= 2, 60, "local compactions", run)
    assert _progress(run)[1] == 0

    registered = _start_compaction_service(cluster)
    _wait(lambda: _progress(run)[1] >= 1, 60, "a remote compaction", run)
    assert time.monotonic() - registered < 30  # a bound: the resolve interval, the next compaction
    run.terminate(timeout=60)  # SIGTERM: a final checkpoint, then the summary
    assert re.search(
        r"job lsm-writes stopped .*compactions: \d+ local, [1-9]\d* remote", run.output()
    ), run.describe("no summary with remote compactions")
