"""`streamlet cluster`: a local job manager and task managers for development, stopped together;
a configured token is not printed; a dead task manager is replaced (its job fails over), task
managers dying in a loop or a dead job manager stop the cluster."""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from streamlet.cluster.local import MAX_TASK_MANAGER_DEATHS
from tests.cluster.harness import TOKEN, Cluster, fetch
from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, ProcessRunner

ENDLESS = str(Path(__file__).parent / "jobs" / "endless.py")


def test_streamlet_cluster_starts_and_stops_a_working_cluster(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    port = free_port()
    process = process_runner.python(
        module="streamlet.cli",
        args=["cluster", "--taskmanagers", "2", "--slots", "1", "--port", str(port)],
        env={"STREAMLET_CLUSTER_TOKEN": None, "STREAMLET_CLUSTER_DIR": tmp_path.as_uri()},
    )
    process.wait_for_output("cluster ready", timeout=60)
    token = re.search(r"STREAMLET_CLUSTER_TOKEN=(\S+)", process.output()).group(1)
    url = f"http://127.0.0.1:{port}"
    status, managers = fetch("GET", f"{url}/api/v1/taskmanagers", token=token)
    assert status == 200 and [m["slots"] for m in managers["task_managers"]] == [1, 1]
    assert fetch("GET", f"{url}/api/v1/jobs", token=None)[0] == 401

    os.kill(process.pid, signal.SIGTERM)  # only `streamlet cluster`: it stops its children
    assert process.wait(timeout=30) == 0
    assert "job manager listening" in process.output()
    with pytest.raises(OSError):
        fetch("GET", f"{url}/api/v1/jobs", token=token)


def _local_cluster(
    process_runner: ProcessRunner, tmp_path: Path, task_managers: int
) -> tuple[Cluster, ManagedProcess]:
    """`streamlet cluster` with the token in the environment and fast heartbeats, and a harness
    `Cluster` (not started) to call it."""
    cluster = Cluster(process_runner, tmp_path)
    cluster.port = free_port()
    process = process_runner.python(
        module="streamlet.cli",
        args=["cluster", "--taskmanagers", str(task_managers), "--slots", "1"]
        + ["--port", str(cluster.port)],
        env=cluster.env(),
    )
    return cluster, process


def _children(process: ManagedProcess, role: str) -> list[int]:
    """The pids of the live `streamlet jobmanager`/`taskmanager` children of `streamlet cluster`."""
    pids = []
    for pid in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue  # gone meanwhile
        if role.encode() in argv and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
            pids.append(int(pid))
    return pids


def _wait_children(process: ManagedProcess, role: str, count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(pids := _children(process, role)) != count:
        assert process.running, process.describe("exited")
        assert time.monotonic() < deadline, f"{count} {role} children never ran: {pids}"
        time.sleep(0.05)
    return pids


def test_a_configured_token_is_not_printed(process_runner: ProcessRunner, tmp_path: Path) -> None:
    cluster, process = _local_cluster(process_runner, tmp_path, task_managers=1)
    process.wait_for_output("cluster ready", timeout=60)
    dashboard = process.wait_for_output("dashboard:")
    assert TOKEN not in process.output()
    assert "the token from STREAMLET_CLUSTER_TOKEN is used (not printed)" in process.output()
    assert dashboard.endswith(f"dashboard: {cluster.url}/dashboard/ (it asks for the token)")
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})


def test_a_killed_task_manager_is_replaced_and_its_job_fails_over(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster, process = _local_cluster(process_runner, tmp_path, task_managers=2)
    process.wait_for_output("cluster ready", timeout=60)
    job_id = cluster.submit(ENDLESS, "-p", "2", "-D", "checkpoint.interval=200ms")
    job = cluster.wait_job(job_id, lambda j: j["status"] == "RUNNING" and j["latest_checkpoint"])
    assert len(job["task_managers"]) == 2  # one slot each: the job needs both
    victim, survivor = _children(process, "taskmanager")
    os.kill(victim, signal.SIGKILL)

    process.wait_for_output(
        re.compile(
            rf"the task manager \d \(pid {victim}\) was killed by SIGKILL: starting a replacement"
        )
    )
    (replacement,) = set(_wait_children(process, "taskmanager", 2)) - {survivor}
    assert f"started the task manager 3 (pid {replacement})" in process.output()
    before = job["latest_checkpoint"]
    job = cluster.wait_job(
        job_id,
        lambda j: j["failovers"] >= 1
        and j["status"] == "RUNNING"
        and (j["latest_checkpoint"] or 0) > before + 1,
    )
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert set(job["task_managers"]) <= {m["id"] for m in managers["task_managers"]}
    assert process.running

    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_task_managers_dying_in_a_loop_stop_the_cluster(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    _, process = _local_cluster(process_runner, tmp_path, task_managers=1)
    killed: set[int] = set()
    for _ in range(MAX_TASK_MANAGER_DEATHS + 1):
        (victim,) = _wait_children(process, "taskmanager", 1)
        assert victim not in killed  # a replacement
        os.kill(victim, signal.SIGKILL)
        killed.add(victim)
        deadline = time.monotonic() + 30
        while victim in _children(process, "taskmanager") and time.monotonic() < deadline:
            time.sleep(0.05)
    assert process.wait(timeout=30) == 1
    assert (
        f"{MAX_TASK_MANAGER_DEATHS + 1} task managers died within 60 s: not replacing them, "
        "stopping the cluster"
    ) in process.output()


def test_a_dead_job_manager_stops_the_cluster(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    _, process = _local_cluster(process_runner, tmp_path, task_managers=1)
    process.wait_for_output("cluster ready", timeout=60)
    (job_manager,) = _children(process, "jobmanager")
    (task_manager,) = _children(process, "taskmanager")
    os.kill(job_manager, signal.SIGKILL)
    assert process.wait(timeout=30) == 1
    assert (
        f"the job manager (pid {job_manager}) was killed by SIGKILL: stopping the cluster"
    ) in process.output()
    with pytest.raises(ProcessLookupError):  # the task manager was stopped (and reaped)
        os.kill(task_manager, 0)
