"""A cluster of real processes for tests: a job manager and task managers started with
`process_runner`, the REST API called with or without the token, the CLI run as a subprocess.

Every process binds a free 127.0.0.1 port; heartbeats are fast (200 ms, lost after 1.5 s) so
failover tests take seconds.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.processes import REPO_ROOT, ManagedProcess, ProcessRunner, start_server

TOKEN = "test-token-7f3a"
REGISTERED = re.compile(r"task manager (\w+) registered with")


class Cluster:
    def __init__(self, runner: ProcessRunner, tmp_path: Path, **job_env: str) -> None:
        self.runner = runner
        self.dir = tmp_path / "cluster"
        self.port = 0
        self.jobmanager: ManagedProcess | None = None
        self.task_managers: dict[str, ManagedProcess] = {}
        self.job_env = job_env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, token: str | None = TOKEN) -> dict[str, str | None]:
        return {
            "STREAMLET_CLUSTER_TOKEN": token,
            "STREAMLET_CLUSTER_DIR": self.dir.as_uri(),
            "STREAMLET_CLUSTER_JOBMANAGER": self.url,
            "STREAMLET_CLUSTER_HEARTBEAT_INTERVAL": "200ms",
            "STREAMLET_CLUSTER_HEARTBEAT_TIMEOUT": "1500ms",
            **self.job_env,
        }

    def start_jobmanager(self) -> ManagedProcess:
        def launch(port: int) -> ManagedProcess:
            self.port = port
            return self.runner.python(
                module="streamlet.cli",
                args=["jobmanager", "--port", str(port)],
                name="jobmanager",
                env=self.env(),
            )

        def probe(port: int) -> None:
            status, _ = self.api("GET", "/api/v1/jobs")
            assert status == 200

        if self.jobmanager is None:
            self.jobmanager, _ = start_server(launch, probe)
        else:  # a restart on the same port, which the task managers know
            self.jobmanager.restart()
            self.jobmanager.wait_for_output("job manager listening on")
        return self.jobmanager

    def start_taskmanager(
        self, slots: int = 2, labels: Sequence[str] = (), **env: str
    ) -> str:
        """Start a task manager (with `--label` per label, `env` over the cluster's); its id."""
        label_args = [arg for label in labels for arg in ("--label", label)]
        process = self.runner.python(
            module="streamlet.cli",
            args=["taskmanager", "--slots", str(slots), *label_args],
            name="taskmanager",
            env={**self.env(), **env},
        )
        match = REGISTERED.search(process.wait_for_output(REGISTERED))
        assert match is not None
        self.task_managers[match.group(1)] = process
        return match.group(1)

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        return fetch(method, self.url + path, body, token)

    def cli(self, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env(token).items() if v is not None}
        return subprocess.run(
            [sys.executable, "-m", "streamlet.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
            env={**_base_env(), **env},
        )

    def submit(self, target: str, *args: str) -> str:
        result = self.cli("submit", target, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def job(self, job_id: str) -> dict[str, Any]:
        status, job = self.api("GET", f"/api/v1/jobs/{job_id}")
        assert status == 200, job
        return job

    def wait_job(
        self, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if condition(job):
                return job
            assert time.monotonic() < deadline, f"job never met the condition: {job}"
            time.sleep(0.1)


def _base_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def fetch(method: str, url: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    """(HTTP status, the JSON answer or else its text) of one call with the token; a `bytes`
    body is sent as it is, anything else as JSON."""
    request = urllib.request.Request(
        url,
        method=method,
        data=body if body is None or isinstance(body, bytes) else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()
