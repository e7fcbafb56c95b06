"""The compaction service as a job (`streamlet submit compaction_service`): it serves gRPC from
a task manager slot, registers its endpoint, `job:<name>` resolves to every running instance, and
it comes back at its address after its task manager is SIGKILLed, and a job offloading to it falls
back to local compaction meanwhile and returns to remote after; plus Prometheus metrics, also for
several services in one task manager."""

import asyncio
import re
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, generate_latest

from compaction_service.convert import spec_to_proto
from compaction_service.job import JOB_NAME, CompactionServiceSource
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from streamlet import RuntimeContext
from streamlet.cluster.endpoints import JobManagerLookup, resolve_compaction_endpoints
from streamlet.config import Configuration
from tests.cluster.harness import TOKEN, Cluster, fetch
from tests.compaction_service.helpers import make_spec, write_tables
from tests.support.ports import free_port

JOBS = Path(__file__).parent / "jobs"


def _serving(endpoint: str) -> bool:
    with grpc.insecure_channel(endpoint) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def _submit_compactor(cluster: Cluster, port: int) -> str:
    return cluster.submit(
        "compaction_service",
        "-D", f"compaction.service.port={port}",
        "-D", "compaction.service.workers=1",
        "-D", "checkpoint.interval=0",
    )  # fmt: skip


def test_compaction_service_job_serves_registers_and_fails_over(cluster: Cluster) -> None:
    first_tm = cluster.start_taskmanager(slots=1)
    second_tm = cluster.start_taskmanager(slots=1)
    ports = [free_port(), free_port()]
    jobs = [_submit_compactor(cluster, port) for port in ports]
    running = [
        cluster.wait_job(job_id, lambda j: j["status"] == "RUNNING" and j["endpoints"])
        for job_id in jobs
    ]
    endpoints = [f"127.0.0.1:{port}" for port in ports]
    everywhere = sorted(endpoints)
    assert [job["endpoints"] for job in running] == [[endpoint] for endpoint in endpoints]
    assert {tm for job in running for tm in job["task_managers"]} == {first_tm, second_tm}
    assert all(_serving(endpoint) for endpoint in endpoints)

    listed = cluster.cli("list").stdout
    for job_id, endpoint in zip(jobs, endpoints, strict=True):
        assert f"{job_id}  compaction-service" in listed and endpoint in listed
    lookup = JobManagerLookup(cluster.url, TOKEN)
    assert sorted(resolve_compaction_endpoints("job:compaction-service", lookup)) == everywhere
    assert resolve_compaction_endpoints("job:no-such-job", lookup) == []

    _, metrics = cluster.api("GET", "/metrics")
    assert 'streamlet_jobmanager_jobs{status="RUNNING"} 2.0' in metrics
    assert "streamlet_jobmanager_slots_free 0.0" in metrics
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    metrics_url = managers["task_managers"][0]["metrics_url"]
    assert fetch("GET", metrics_url, token=None)[0] == 401
    _, tm_metrics = fetch("GET", metrics_url)
    assert "streamlet_taskmanager_slots_used 1.0" in tm_metrics
    assert re.search(
        r'streamlet_compaction_service_accepted_total\{endpoint="127.0.0.1:\d+"\} 0.0', tm_metrics
    )
    assert "process_cpu_seconds_total" in tm_metrics

    spare_tm = cluster.start_taskmanager(slots=1)
    (victim,) = running[0]["task_managers"]
    cluster.task_managers[victim].kill()
    moved = cluster.wait_job(
        jobs[0], lambda j: j["status"] == "RUNNING" and j["failovers"] == 1 and j["endpoints"]
    )
    assert moved["task_managers"] == [spare_tm]
    assert moved["endpoints"] == [endpoints[0]]  # same address: clients return to remote
    assert _serving(endpoints[0])
    assert sorted(resolve_compaction_endpoints("job:compaction-service", lookup)) == everywhere

    assert cluster.cli("cancel", jobs[1]).returncode == 0
    cluster.wait_job(jobs[1], lambda j: j["status"] == "CANCELED")
    assert resolve_compaction_endpoints("job:compaction-service", lookup) == [endpoints[0]]


def _compactions(job: dict) -> tuple[int, int]:
    metrics = job.get("metrics", {})
    return metrics.get("compactions_local", 0), metrics.get("compactions_remote", 0)


def test_jobs_fall_back_to_local_compaction_and_return_to_remote(cluster: Cluster) -> None:
    compactor_tm = cluster.start_taskmanager(slots=1)
    port = free_port()
    compactor = _submit_compactor(cluster, port)
    cluster.wait_job(compactor, lambda j: j["status"] == "RUNNING" and j["endpoints"])
    cluster.start_taskmanager(slots=1)
    writer = cluster.submit(
        str(JOBS / "lsm_writes.py"),
        "-D", "state.backend=lsm",
        "-D", 'state.options={"lsm.memtable_bytes": 65536, "lsm.l0_compaction_trigger": 2}',
        "-D", "compaction.mode=remote",
        "-D", "compaction.service.address=job:compaction-service",
        "-D", "checkpoint.interval=0",
    )  # fmt: skip
    offloading = cluster.wait_job(writer, lambda j: _compactions(j)[1] >= 2, timeout=60)
    assert offloading["task_managers"] != [compactor_tm]

    cluster.task_managers[compactor_tm].kill()  # the compaction service goes down with it
    local_before, remote_before = _compactions(offloading)
    fell_back = cluster.wait_job(writer, lambda j: _compactions(j)[0] > local_before, timeout=60)
    assert fell_back["status"] == "RUNNING"  # the writer kept going on local compactions

    cluster.start_taskmanager(slots=1)  # the compactor job fails over to it, at its address
    cluster.wait_job(compactor, lambda j: j["status"] == "RUNNING" and j["failovers"] == 1)
    remote_at_restart = _compactions(cluster.job(writer))[1]
    returned = cluster.wait_job(
        writer, lambda j: _compactions(j)[1] > remote_at_restart + 1, timeout=90
    )
    assert returned["status"] == "RUNNING" and returned["failovers"] == 0
    assert cluster.cli("cancel", writer).returncode == 0


def _accepted(metrics: str, endpoint: str) -> float | None:
    label = re.escape(f'{{endpoint="{endpoint}"}}')
    found = re.search(rf"^streamlet_compaction_service_accepted_total{label} (\S+)$", metrics, re.M)
    return float(found.group(1)) if found else None


def test_several_services_in_one_process_each_have_their_metrics(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/allowed"
    config = Configuration(
        {"compaction.service.allowed-roots": root, "compaction.service.workers": 1}
    )
    spec = make_spec(f"{root}/db", write_tables(f"{root}/db", tables=2, entries=100))

    async def scenario() -> None:
        source = CompactionServiceSource()
        readers = [
            source.create_reader(RuntimeContext(JOB_NAME, JOB_NAME, i, 3, config)) for i in range(3)
        ]
        opened = []
        try:
            for reader in readers:
                await reader.open(None)
                opened.append(reader)
            endpoints = [f"127.0.0.1:{reader.server.port}" for reader in readers]
            async with grpc.aio.insecure_channel(endpoints[1]) as channel:
                stub = pb_grpc.CompactionServiceStub(channel)
                await stub.Compact(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=60)
            metrics = generate_latest(REGISTRY).decode()
            assert [_accepted(metrics, e) for e in endpoints] == [0.0, 1.0, 0.0]
            await opened.pop(0).close()  # a service that stops leaves the metrics, alone
            metrics = generate_latest(REGISTRY).decode()
            assert [_accepted(metrics, e) for e in endpoints] == [None, 1.0, 0.0]
        finally:
            for reader in opened:
                await reader.close()
        assert _accepted(generate_latest(REGISTRY).decode(), endpoints[1]) is None

    asyncio.run(scenario())


def test_a_compactor_job_with_parallelism_2_on_one_task_manager(cluster: Cluster) -> None:
    tm = cluster.start_taskmanager(slots=2)
    job_id = cluster.submit(
        "compaction_service",
        "-p", "2",
        "-D", "compaction.service.workers=1",
        "-D", "checkpoint.interval=0",
    )  # fmt: skip
    def settled(job: dict) -> bool:  # failed (no point waiting), or both subtasks serve
        serving = job["status"] == "RUNNING" and len(job["endpoints"]) == 2
        return serving or job["status"] == "FAILED"

    job = cluster.wait_job(job_id, settled, timeout=60)
    assert job["status"] == "RUNNING", job
    assert job["task_managers"] == [tm]
    assert all(_serving(endpoint) for endpoint in job["endpoints"])
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    (manager,) = managers["task_managers"]
    _, metrics = fetch("GET", manager["metrics_url"])
    assert [_accepted(metrics, endpoint) for endpoint in job["endpoints"]] == [0.0, 0.0]
    assert cluster.cli("cancel", job_id).returncode == 0
    cluster.wait_job(job_id, lambda j: j["status"] == "CANCELED")
