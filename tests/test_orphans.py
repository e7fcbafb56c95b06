"""No helper process outlives a SIGKILLed parent by more than a few seconds.

Each test starts a real process with a unique marker in its environment (inherited by everything it
starts), waits until it has helper processes, SIGKILLs that one process only (not its process group,
which is what an OOM killer or `kill -9 PID` does), and then checks `/proc` for survivors. A
benchmark, which starts its services itself, is stopped with SIGTERM instead (`kill PID`).
"""

import contextlib
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import grpc

from compaction_service.convert import spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from tests.cluster.harness import Cluster
from tests.cluster.jobs import lsm_writes
from tests.compaction_service.helpers import make_spec, write_tables
from tests.runtime.jobs import keyed_count
from tests.support.ports import free_port
from tests.support.processes import ManagedProcess, ProcessRunner

MARKER = "ORPHAN_TEST_MARK"
SURVIVAL_S = 5.0  # how long a descendant may outlive its parent
POOL_WORKER = "multiprocessing.spawn"  # the command line of a spawned worker process
SMALL_MEMTABLES = json.dumps({"lsm.memtable_bytes": 16 << 10, "lsm.l0_compaction_trigger": 2})


def marked(mark: str, command: str = "") -> set[int]:
    """Pids of live processes whose environment carries `mark` (and whose command line contains
    `command`)."""
    needle = f"{MARKER}={mark}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0") and command in cmdline:
            pids.add(int(entry.name))
    return pids


def wait_for_helpers(
    process: ManagedProcess, mark: str, at_least: int, timeout: float, command: str = ""
) -> set[int]:
    """The marked processes other than `process` whose command line contains `command`, once
    there are `at_least` of them."""
    deadline = time.monotonic() + timeout
    while True:
        helpers = marked(mark, command) - {process.pid}
        if len(helpers) >= at_least:
            return helpers
        assert process.running, process.describe("exited before it started its helpers")
        assert time.monotonic() < deadline, process.describe(
            f"started {len(helpers)} helper processes, expected {at_least}"
        )
        time.sleep(0.1)


def kill_only(process: ManagedProcess, mark: str) -> None:
    """SIGKILL `process` alone, then expect every process it started gone within SURVIVAL_S."""
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + SURVIVAL_S
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in marked(mark)}
    assert not survivors, f"{len(survivors)} processes outlived their parent: {survivors}"


def test_streamlet_run_leaves_no_compaction_workers(
    process_runner: ProcessRunner, tmp_path
) -> None:
    mark = uuid.uuid4().hex
    run = process_runner.python(
        module="streamlet.cli",
        args=[
            "run", str(Path(keyed_count.__file__)), "-p", "2",
            "-D", "state.backend=lsm",
            "-D", f"state.dir={(tmp_path / 'state').as_uri()}",
            "-D", f"checkpoint.dir={(tmp_path / 'checkpoints').as_uri()}",
            "-D", f"state.options={SMALL_MEMTABLES}",
        ],
        name="streamlet-run",
        env={
            MARKER: mark,
            "KEYED_COUNT_OUTPUT": str(tmp_path / "out"),
            "KEYED_COUNT_RECORDS": "100000000",
            "KEYED_COUNT_RATE": "20000",
        },
    )
    wait_for_helpers(run, mark, at_least=1, timeout=60, command=POOL_WORKER)
    kill_only(run, mark)


def test_compaction_service_leaves_no_workers(process_runner: ProcessRunner, tmp_path) -> None:
    mark = uuid.uuid4().hex
    service = process_runner.python(
        module="streamlet.cli",
        args=[
            "compaction-service", "--port", "0", "--workers", "2",
            "--allowed-root", tmp_path.as_uri(),
        ],
        name="compaction-service",
        env={MARKER: mark},
    )
    listening = service.wait_for_output("compaction service listening on", timeout=60)
    port = int(re.search(r"listening on [\d.]+:(\d+)", listening).group(1))  # type: ignore[union-attr]
    workers = wait_for_helpers(service, mark, at_least=2, timeout=30, command=POOL_WORKER)
    # One input is a FIFO: the worker that opens it blocks there, in the middle of its task.
    root = f"{tmp_path.as_uri()}/db"
    tables = write_tables(root, tables=2, entries=50)
    fifo = tmp_path / "db" / "tables" / tables[0].name
    fifo.unlink()
    os.mkfifo(fifo)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = pb_grpc.CompactionServiceStub(channel).Compact.future(
        pb.CompactRequest(spec=spec_to_proto(make_spec(root, tables))), timeout=60
    )
    try:
        deadline = time.monotonic() + 30
        while not any(_wchan(pid) == "wait_for_partner" for pid in workers):
            assert time.monotonic() < deadline, "no worker started the compaction"
            time.sleep(0.05)
        kill_only(service, mark)
    finally:
        call.cancel()
        channel.close()


def _wchan(pid: int) -> str:
    """Where the kernel says the process waits ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_task_manager_leaves_no_compaction_workers(
    process_runner: ProcessRunner, tmp_path
) -> None:
    mark = uuid.uuid4().hex
    cluster = Cluster(process_runner, tmp_path, **{MARKER: mark})
    cluster.start_jobmanager()
    tm = cluster.start_taskmanager()
    cluster.submit(
        lsm_writes.__file__,
        "-D", "state.backend=lsm",
        "-D", f"state.options={SMALL_MEMTABLES}",
    )
    process = cluster.task_managers[tm]
    wait_for_helpers(process, mark, at_least=1, timeout=60, command=POOL_WORKER)
    cluster.jobmanager.kill()  # only the task manager's descendants are in question
    kill_only(process, mark)


def test_local_cluster_leaves_no_managers(process_runner: ProcessRunner, tmp_path) -> None:
    mark = uuid.uuid4().hex
    cluster = process_runner.python(
        module="streamlet.cli",
        args=["cluster", "--taskmanagers", "2", "--port", str(free_port())],
        name="cluster",
        env={
            MARKER: mark,
            "STREAMLET_CLUSTER_TOKEN": "orphan-test-token",
            "STREAMLET_CLUSTER_DIR": (tmp_path / "cluster").as_uri(),
        },
    )
    cluster.wait_for_output("cluster ready", timeout=60)
    wait_for_helpers(cluster, mark, at_least=1, timeout=10, command="jobmanager")
    wait_for_helpers(cluster, mark, at_least=2, timeout=10, command="taskmanager")
    kill_only(cluster, mark)


def test_a_benchmark_stopped_with_sigterm_stops_the_services_it_started(
    process_runner: ProcessRunner,
) -> None:
    mark = uuid.uuid4().hex
    bench = process_runner.python(
        module="benchmarks", args=["faust_recovery", "--quick"], name="benchmark",
        env={MARKER: mark},
    )
    wait_for_helpers(bench, mark, at_least=1, timeout=60, command="tansu")
    wait_for_helpers(bench, mark, at_least=1, timeout=60, command="moto.server")
    assert bench.pid is not None
    os.kill(bench.pid, signal.SIGTERM)  # the benchmark alone, as `kill PID` or `timeout` does
    assert bench.wait(timeout=60) != 0
    deadline = time.monotonic() + SURVIVAL_S
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in marked(mark)}
    for pid in survivors:  # not left running when the test fails
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{len(survivors)} processes outlived the benchmark: {survivors}"
