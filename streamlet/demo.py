"""`streamlet demo`: the paper job on the lsm backend, its compactions offloaded to a service.

The demo starts a compaction service in its own process (`streamlet compaction-service`, allowed to
read and write only below a temporary directory), runs `jobs/paper_job.py` locally with the `lsm`
backend in that directory and `compaction.mode: remote`, and prints the job's summary and what the
service did: how many compactions ran remotely, with their bytes and CPU seconds. Everything runs on
embedded defaults and loopback, and is removed afterwards.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from streamlet.config import Configuration
from streamlet.executor import JobResult
from streamlet.launcher import run_job_file

PAPER_JOB = Path(__file__).resolve().parents[1] / "jobs" / "paper_job.py"
_LISTENING = re.compile(r"compaction service listening on \S+:(\d+)")


@dataclass(frozen=True)
class DemoResult:
    job: JobResult
    service: pb.Totals


def run_demo(rows: int = 30_000, parallelism: int = 2) -> DemoResult:
    with tempfile.TemporaryDirectory(prefix="streamlet-demo-") as workdir:
        root = Path(workdir)
        service, port = _start_service(root)
        try:
            os.environ.setdefault("PAPER_ROWS", str(rows))
            config = Configuration.load(
                overrides={
                    "state.backend": "lsm",
                    "state.dir": (root / "state").as_uri(),
                    "state.local-dir": str(root / "local"),
                    "checkpoint.dir": (root / "checkpoints").as_uri(),
                    "checkpoint.interval": "2s",
                    "compaction.mode": "remote",
                    "compaction.service.address": f"127.0.0.1:{port}",
                    # Small memtables, so a short demo flushes and compacts many times.
                    "lsm.memtable_bytes": 1 << 20,
                    "lsm.l0_compaction_trigger": 3,
                },
                environ={},
            )
            result = run_job_file(str(PAPER_JOB), config, parallelism)
            totals = _service_totals(port)
        finally:
            service.terminate()
            service.wait(timeout=30)
    return DemoResult(result, totals)


def _start_service(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A compaction service process on a free loopback port (its log in `root`), and that port."""
    log_path = root / "compaction-service.log"
    with open(log_path, "wb") as log_file:
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlet.cli",
                "compaction-service",
                "--port",
                "0",
                "--workers",
                "1",
                "--allowed-root",
                root.as_uri(),
            ],
            stderr=log_file,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and service.poll() is None:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return service, int(found.group(1))
        time.sleep(0.05)
    service.kill()
    service.wait()
    raise RuntimeError(f"the compaction service did not start:\n{log_path.read_text()}")


def _service_totals(port: int) -> pb.Totals:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        status = pb_grpc.CompactionServiceStub(channel).Status(pb.StatusRequest(), timeout=10)
    return status.totals


def print_demo(result: DemoResult) -> int:
    totals = result.service
    print(
        f"compaction service: {totals.completed} compactions ran remotely "
        f"({totals.input_bytes / 1e6:.1f} MB in, {totals.output_bytes / 1e6:.1f} MB out, "
        f"{totals.cpu_seconds:.1f} CPU seconds moved off the job), {totals.failed} failed, "
        f"{totals.rejected} rejected"
    )
    return 0 if totals.completed > 0 else 1
