"""`streamlet cluster`: a local job manager and task managers for development, stopped together."""

import os
import re
import signal
from pathlib import Path

import pytest

from tests.cluster.harness import fetch
from tests.support.ports import free_port
from tests.support.processes import ProcessRunner


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
