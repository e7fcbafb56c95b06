"""Draining on SIGTERM: a compactor task manager (and `streamlet compaction-service`) stops taking
work at once (health NOT_SERVING, new Compact calls UNAVAILABLE, its endpoints withdrawn from the
job manager), lets the call it runs finish, or stops it after the grace, and exits within the grace
and a bound; the job manager forgets it at once. The compactions wait for the test
(`tests.cluster.gated`), so nothing depends on how long a compaction takes."""

import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from compaction_service.convert import result_from_proto, spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from tests.cluster.compactors import ON_COMPACTORS, SERVICE, health, serving_on, sigterm
from tests.cluster.gated import db_path
from tests.cluster.harness import Cluster
from tests.compaction_service.helpers import make_spec, read_outputs, wait_until, write_tables
from tests.support.processes import ProcessRunner

GATED_JOB = str(Path(__file__).parent / "jobs" / "gated_compaction_service.py")
ENDLESS_JOB = str(Path(__file__).parent / "jobs" / "endless.py")
EXIT_BOUND_S = 15.0  # beyond the drain grace: stopping the jobs, deregistering, the interpreter
READY = re.compile(r"compaction service listening on 127\.0\.0\.1:(\d+)")


@pytest.fixture
def calls() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def compact(pool: ThreadPoolExecutor, endpoint: str, spec: object) -> "Future[pb.CompactResponse]":
    """A Compact call in the background (its deadline bounds it)."""

    def call() -> pb.CompactResponse:
        with grpc.insecure_channel(endpoint) as channel:
            stub = pb_grpc.CompactionServiceStub(channel)
            return stub.Compact(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=60)

    return pool.submit(call)


def held_spec(root: str) -> tuple[object, Path]:
    """A spec whose compaction waits while `<db>/hold` exists; that database's directory."""
    db = f"{root}/db"
    spec = make_spec(db, write_tables(db, tables=2, entries=200))
    (db_path(db) / "hold").touch()
    return spec, db_path(db)


def code_of(future: "Future[pb.CompactResponse]") -> grpc.StatusCode:
    error = future.exception(timeout=30)
    assert isinstance(error, grpc.RpcError), error
    return error.code()


def test_sigterm_drains_a_compactor_task_manager_and_its_running_call_completes(
    cluster: Cluster, tmp_path: Path, calls: ThreadPoolExecutor
) -> None:
    root = f"file://{tmp_path}/data"
    grace_s = 20.0
    tm = cluster.start_taskmanager(
        slots=3, labels=["compactor"], STREAMLET_TASKMANAGER_DRAIN_GRACE=f"{grace_s}s"
    )
    roots = ["-D", f"compaction.service.allowed-roots={root}"]
    gated = cluster.submit(GATED_JOB, *ON_COMPACTORS, *SERVICE, *roots)
    plain = cluster.submit("compaction_service", *ON_COMPACTORS, *SERVICE, *roots)
    (endpoint,) = cluster.wait_job(gated, serving_on({tm}))["endpoints"]
    (other_endpoint,) = cluster.wait_job(plain, serving_on({tm}))["endpoints"]  # same process
    ordinary = cluster.submit(ENDLESS_JOB, "-D", "checkpoint.interval=0")
    cluster.wait_job(ordinary, lambda j: j["status"] == "RUNNING")

    spec, db = held_spec(root)
    running = compact(calls, endpoint, spec)
    wait_until(lambda: (db / f"started-{spec.compaction_id}").exists(), 30, "the call runs")
    signalled = sigterm(cluster.task_managers[tm])

    # At once: not serving, new calls refused with UNAVAILABLE, both services in the process.
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    wait_until(lambda: health(endpoint) == not_serving, 5, "NOT_SERVING")
    wait_until(lambda: health(other_endpoint) == not_serving, 5, "the other NOT_SERVING")
    refused = compact(calls, endpoint, make_spec(spec.db_root, list(spec.inputs[0].tables)))
    assert code_of(refused) == grpc.StatusCode.UNAVAILABLE
    assert "draining" in refused.exception().details()
    # Its endpoints are withdrawn from the job manager's directory (`job:` addresses).
    wait_until(
        lambda: cluster.api("GET", "/api/v1/endpoints/compaction-service")[1]["endpoints"] == [],
        5,
        "the endpoints withdrawn",
    )
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert [(m["id"], m["draining"]) for m in managers["task_managers"]] == [(tm, True)]
    assert not running.done()  # the call still runs: the drain waits for it

    (db / "hold").unlink()
    result = result_from_proto(running.result(timeout=30).result)
    assert result.compaction_id == spec.compaction_id and result.outputs
    assert len(read_outputs(spec.db_root, result)) == result.stats.output_entries

    process = cluster.task_managers[tm]
    assert process.wait(timeout=grace_s + EXIT_BOUND_S) == 0
    assert time.monotonic() - signalled < grace_s + EXIT_BOUND_S
    output = process.output()
    assert f"task manager {tm} deregistered" in output
    # The job manager forgot it at once (not after the heartbeat timeout): no instance left.
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert managers["task_managers"] == []
    for job_id in (gated, plain):
        job = cluster.job(job_id)
        assert job["status"] == "CREATED" and job["instances"] == [], job
    job = cluster.job(ordinary)  # failed over at once, waiting for slots elsewhere
    assert (job["status"], job["failovers"]) == ("RESTARTING", 1), job


def test_a_call_still_running_after_the_grace_is_stopped_with_unavailable(
    cluster: Cluster, tmp_path: Path, calls: ThreadPoolExecutor
) -> None:
    root = f"file://{tmp_path}/data"
    grace_s = 2.0
    tm = cluster.start_taskmanager(
        slots=1, labels=["compactor"], STREAMLET_TASKMANAGER_DRAIN_GRACE=f"{grace_s}s"
    )
    roots = ["-D", f"compaction.service.allowed-roots={root}"]
    job_id = cluster.submit(GATED_JOB, *ON_COMPACTORS, *SERVICE, *roots)
    (endpoint,) = cluster.wait_job(job_id, serving_on({tm}))["endpoints"]

    spec, db = held_spec(root)  # held until HOLD_LIMIT_S: far beyond the grace
    running = compact(calls, endpoint, spec)
    wait_until(lambda: (db / f"started-{spec.compaction_id}").exists(), 30, "the call runs")
    assert list((db / "tables").glob(f"{spec.output_prefix}*partial*"))
    signalled = sigterm(cluster.task_managers[tm])

    assert code_of(running) == grpc.StatusCode.UNAVAILABLE  # the client compacts locally
    assert "drain grace ended" in running.exception().details()
    assert time.monotonic() - signalled >= grace_s
    process = cluster.task_managers[tm]
    assert process.wait(timeout=grace_s + EXIT_BOUND_S) == 0
    assert time.monotonic() - signalled < grace_s + EXIT_BOUND_S
    assert not list((db / "tables").glob(f"{spec.output_prefix}*"))  # nothing left behind


def test_sigterm_drains_the_standalone_compaction_service(
    process_runner: ProcessRunner, tmp_path: Path, calls: ThreadPoolExecutor
) -> None:
    root = f"file://{tmp_path}/data"
    grace_s = 20.0
    service = process_runner.python(module="tests.cluster.gated", args=[root, str(grace_s)])
    match = READY.search(service.wait_for_output(READY))
    assert match is not None
    endpoint = f"127.0.0.1:{match.group(1)}"

    spec, db = held_spec(root)
    running = compact(calls, endpoint, spec)
    wait_until(lambda: (db / f"started-{spec.compaction_id}").exists(), 30, "the call runs")
    signalled = sigterm(service)
    wait_until(
        lambda: health(endpoint) == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "NOT_SERVING"
    )
    refused = compact(calls, endpoint, make_spec(spec.db_root, list(spec.inputs[0].tables)))
    assert code_of(refused) == grpc.StatusCode.UNAVAILABLE

    (db / "hold").unlink()
    assert result_from_proto(running.result(timeout=30).result).outputs
    assert service.wait(timeout=grace_s + EXIT_BOUND_S) == 0
    assert time.monotonic() - signalled < grace_s + EXIT_BOUND_S
