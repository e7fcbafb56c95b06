"""Compaction services coming and going under running jobs: pickup, drain, nothing lost.

The scenario, with real processes on loopback (tests/cluster/harness.py): a job manager; a task
manager for the jobs; one compactor task manager (label `compactor`) with the compaction service
submitted once in its per-task-manager mode. Two jobs on the `lsm` backend with small memtables
offload their compactions to the compactors: `lsm-writes` writes random keys without end (a steady
compaction load) and `keyed-count` counts words into a FileSink (its output is checked for
exactly-once). The jobs find the compactors (`address`):

- "job": through `job:compaction-service`, the endpoints the instances registered with the job
  manager;
- "dns": through `dns://127.0.0.1:<port>/compactors.test:<P>`, a real DNS server
  (tests/support/dns_server.py) whose A records follow the tier as a Kubernetes headless Service's
  follow its ready pods: each compactor task manager binds a loopback address of its own
  (127.0.0.2, .3, .4: `cluster.bind-host`), its service binds the one port P there, and its
  address is listed once the service there answers SERVING, unlisted when it is signalled.

Then:

1. a second compactor task manager starts: its service starts by itself (no submit) and takes
   compactions; `pickup_s` is the time from its process start to its first compaction;
2. the first compactor gets SIGTERM (it drains: `drain_s` is the time from the signal to its exit)
   and the second SIGKILL: with no service left the jobs compact locally (`fallback_compactions`);
3. a third compactor task manager starts and takes compactions again (`return_s`, from its start);
4. `keyed-count` is let finish: `exact` says whether every count was committed exactly once, and
   `lost_compactions` counts the compactions the jobs' databases saw fail or time out (each would
   have to be redone: the client's local fallback must leave none).

`python -m benchmarks scaleout [--quick] --json` (with "job"); tests/cluster/test_elastic_tier.py
runs the same scenario, with either address, and checks it.
"""

import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from grpc_health.v1 import health_pb2

from tests.cluster.compactors import LABEL, ON_COMPACTORS, SERVICE, health, serving_on, sigterm
from tests.cluster.exactly_once import JOB as KEYED_COUNT
from tests.cluster.exactly_once import assert_exactly_once
from tests.cluster.harness import Cluster
from tests.cluster.jobs import lsm_writes
from tests.support.dns_server import DnsServer
from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, ProcessRunner

SERVED = "perform compaction on compaction-service side"
DB_FAILURE = re.compile(r"compaction \w+ (failed|timed out)")
WAIT_S = 60.0
ADDRESSES = ("job", "dns")
DNS_NAME = "compactors.test"
COMPACTOR_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # all of 127/8 is loopback (Linux)
REMOTE = (
    "-D", "state.backend=lsm",
    "-D", "lsm.memtable_bytes=32768",
    "-D", "lsm.l0_compaction_trigger=2",
    "-D", "compaction.mode=remote",
    "-D", "compaction.client.resolve-interval=1s",
    "-D", "checkpoint.interval=500ms",
)  # fmt: skip


class _Compactors:
    """Starts the compactor task managers and lists the serving ones where the jobs' address
    looks: nothing to do for "job" (the job manager's directory follows the instances); for
    "dns", each on its own loopback address with the service on one port, listed in the DNS
    server's records (the module docstring)."""

    def __init__(self, cluster: Cluster, address: str) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"address is one of {', '.join(ADDRESSES)}, not {address!r}")
        self.cluster = cluster
        self.dns = DnsServer() if address == "dns" else None
        self.port = free_port() if self.dns else 0  # 0: any free port, on 127.0.0.1
        self.hosts: dict[str, str] = {}  # task manager id -> the loopback address it binds

    @property
    def address(self) -> str:
        if self.dns is None:
            return "job:compaction-service"
        return f"dns://{self.dns.address}/{DNS_NAME}:{self.port}"

    @property
    def service_args(self) -> list[str]:
        return [*ON_COMPACTORS, *SERVICE, "-D", f"compaction.service.port={self.port}"]

    def start(self) -> str:
        """Start a compactor task manager; its id."""
        if self.dns is None:
            return self.cluster.start_taskmanager(slots=1, labels=[LABEL])
        host = COMPACTOR_HOSTS[len(self.hosts)]
        tm = self.cluster.start_taskmanager(
            slots=1, labels=[LABEL], STREAMLET_CLUSTER_BIND_HOST=host
        )
        self.hosts[tm] = host
        return tm

    def list_serving(self, task_managers: set[str]) -> None:
        """List exactly these compactors (each must serve: a readiness probe)."""
        if self.dns is None:
            return
        hosts = [self.hosts[tm] for tm in task_managers]
        for host in hosts:
            status = health(f"{host}:{self.port}")
            assert status == health_pb2.HealthCheckResponse.SERVING, (host, status)
        self.dns.set_records(DNS_NAME, hosts)

    def __enter__(self) -> "_Compactors":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.dns is not None:
            self.dns.stop()


def _until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Wait for `condition` (polled); the time it held (time.monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic()


def _served(process: ManagedProcess) -> int:
    return process.output().count(SERVED)


def _local_compactions(cluster: Cluster, job_id: str) -> int:
    return int(cluster.job(job_id)["metrics"].get("compactions_local", 0) or 0)


def scenario(
    runner: ProcessRunner, workdir: Path, records: int, address: str = "job"
) -> dict[str, Any]:
    """Run the scenario of the module docstring, the jobs finding the compactors through
    `address` ("job" or "dns"); its figures."""
    cluster = Cluster(runner, workdir, KEYED_COUNT_RECORDS=str(records), KEYED_COUNT_RATE="1000")
    with _Compactors(cluster, address) as compactors:
        return _run(cluster, compactors, workdir, records)


def _run(
    cluster: Cluster, compactors: _Compactors, workdir: Path, records: int
) -> dict[str, Any]:
    cluster.start_jobmanager()
    jobs_tm = cluster.start_taskmanager(slots=2)
    first = compactors.start()
    service = cluster.submit("compaction_service", *compactors.service_args)
    cluster.wait_job(service, serving_on({first}), timeout=WAIT_S)
    compactors.list_serving({first})
    remote = [*REMOTE, "-D", f"compaction.service.address={compactors.address}"]
    writes = cluster.submit(str(Path(lsm_writes.__file__)), *remote)
    output, release = workdir / "output", workdir / "release"
    count = cluster.submit(
        KEYED_COUNT,
        *remote,
        "--",
        "--output", str(output),
        "--hold-at", str(records - 500),  # it cannot end before the scenario lets it
        "--release-file", str(release),
    )  # fmt: skip
    tms = cluster.task_managers
    _until(lambda: _served(tms[first]) > 0, "the first compactor serves the jobs")

    started = time.monotonic()
    second = compactors.start()
    cluster.wait_job(service, serving_on({first, second}), timeout=WAIT_S)
    compactors.list_serving({first, second})
    pickup = _until(lambda: _served(tms[second]) > 0, "the second compactor gets work") - started

    local_before = _local_compactions(cluster, writes)
    compactors.list_serving(set())  # as a pod that terminates leaves its Service at once
    signalled = sigterm(tms[first])
    tms[second].kill()
    tms[first].wait(timeout=WAIT_S)
    drain = time.monotonic() - signalled
    _until(lambda: _local_compactions(cluster, writes) > local_before, "the jobs fall back")

    started = time.monotonic()
    third = compactors.start()
    cluster.wait_job(service, serving_on({third}), timeout=WAIT_S)
    compactors.list_serving({third})
    back = _until(lambda: _served(tms[third]) > 0, "the third compactor gets work") - started

    release.touch()
    cluster.wait_job(count, lambda j: j["status"] == "FINISHED", timeout=WAIT_S)
    fallbacks = _local_compactions(cluster, writes) + _local_compactions(cluster, count)
    assert cluster.cli("cancel", writes).returncode == 0
    try:
        assert_exactly_once(output, records)
        exact = True
    except AssertionError:
        exact = False
    log = tms[jobs_tm].output()
    return {
        "pickup_s": pickup,
        "drain_s": drain,
        "return_s": back,
        "lost_compactions": len(DB_FAILURE.findall(log)),
        "fallback_compactions": fallbacks,
        "remote_compactions": sum(_served(tms[tm]) for tm in (first, second, third)),
        "exact": exact,
        "failovers": cluster.job(count)["failovers"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    runner = ProcessRunner(workdir / "logs")
    try:
        return scenario(runner, workdir, records=20_000 if quick else 40_000)
    finally:
        runner.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
