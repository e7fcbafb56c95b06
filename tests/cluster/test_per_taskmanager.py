"""The compaction service on every compactor task manager (`placement.per-taskmanager`): an
instance starts by itself on a labelled task manager that joins later and registers its endpoint,
an unlabelled task manager gets none, an instance ends (and its endpoint goes) with its task
manager, a restarted job manager adopts the running instances, every instance binds the fixed
service port on its own task manager's host, and bad submissions, labels and draining flags are
refused."""

import time

from grpc_health.v1 import health_pb2

from tests.cluster.compactors import (
    LABEL,
    ON_COMPACTORS,
    PER_TASK_MANAGER,
    SERVICE,
    health,
    instances_by_task_manager,
    serving_on,
)
from tests.cluster.harness import Cluster
from tests.compaction_service.helpers import wait_until
from tests.support.ports import free_port

PICKUP_S = 10.0


def test_an_instance_on_every_labelled_task_manager_also_one_that_joins(cluster: Cluster) -> None:
    first = cluster.start_taskmanager(slots=1, labels=[LABEL])
    job_id = cluster.submit("compaction_service", *ON_COMPACTORS, *SERVICE)
    job = cluster.wait_job(job_id, serving_on({first}))
    assert job["per_task_manager"] and job["label"] == LABEL and job["parallelism"] == 1
    (first_endpoint,) = job["endpoints"]
    assert health(first_endpoint) == health_pb2.HealthCheckResponse.SERVING

    # Joins later: its instance starts by itself, and its endpoint is registered and serves,
    # within the 10 s a new compactor has to be picked up in (docs/cluster.md).
    second = cluster.start_taskmanager(slots=1, labels=["other", LABEL])
    registered = time.monotonic()
    job = cluster.wait_job(job_id, serving_on({first, second}), timeout=PICKUP_S)
    print(f"pickup: endpoint listed {time.monotonic() - registered:.2f} s after registration")
    second_endpoint = instances_by_task_manager(job)[second]["endpoints"][0]
    assert second_endpoint != first_endpoint
    assert health(second_endpoint) == health_pb2.HealthCheckResponse.SERVING
    _, listed = cluster.api("GET", "/api/v1/endpoints/compaction-service")
    assert sorted(listed["endpoints"]) == sorted([first_endpoint, second_endpoint])

    # Unlabelled: no instance. A labelled one started after it gets its instance, so the
    # scheduler has seen the unlabelled one by then.
    unlabelled = cluster.start_taskmanager(slots=1)
    third = cluster.start_taskmanager(slots=1, labels=[LABEL])
    job = cluster.wait_job(job_id, serving_on({first, second, third}))
    assert unlabelled not in instances_by_task_manager(job)
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    free = {tm["id"]: tm["free_slots"] for tm in managers["task_managers"]}
    assert free == {first: 0, second: 0, third: 0, unlabelled: 1}
    labels = {tm["id"]: tm["labels"] for tm in managers["task_managers"]}
    assert labels[second] == ["other", LABEL] and labels[unlabelled] == []

    # Leaves (SIGKILL): its instance ends with it, and so does its endpoint; the others go on.
    cluster.task_managers[second].kill()
    job = cluster.wait_job(job_id, serving_on({first, third}))
    assert second_endpoint not in job["endpoints"] and job["failovers"] == 0
    _, listed = cluster.api("GET", "/api/v1/endpoints/compaction-service")
    assert second_endpoint not in listed["endpoints"] and len(listed["endpoints"]) == 2

    assert cluster.cli("cancel", job_id).returncode == 0
    job = cluster.wait_job(job_id, lambda j: j["status"] == "CANCELED")
    assert job["endpoints"] == [] and job["task_managers"] == []
    _, listed = cluster.api("GET", "/api/v1/endpoints/compaction-service")
    assert listed["endpoints"] == []


def test_without_a_label_every_task_manager_runs_one_and_waits_for_one(cluster: Cluster) -> None:
    job_id = cluster.submit("compaction_service", *PER_TASK_MANAGER, *SERVICE)
    assert cluster.job(job_id)["status"] == "CREATED"  # no task manager yet: it waits
    tm = cluster.start_taskmanager(slots=2)
    job = cluster.wait_job(job_id, serving_on({tm}))
    assert job["config"]["checkpoint.interval"] == 0  # instances take no periodic checkpoints
    # An ordinary job takes the other slot, beside the instance.
    other = cluster.submit("compaction_service", *SERVICE, "-D", "checkpoint.interval=0")
    assert cluster.wait_job(other, lambda j: j["status"] == "RUNNING")["task_managers"] == [tm]


def test_every_instance_binds_the_fixed_port_on_its_own_task_managers_host(
    cluster: Cluster,
) -> None:
    # As compactor pods behind a headless Service: each binds compaction.service.port (not
    # port + anything) on the interface of its own task manager (cluster.bind-host there), not
    # the job manager's. Loopback addresses stand for the pods' IPs.
    port = free_port()
    hosts = {
        cluster.start_taskmanager(slots=1, labels=[LABEL], STREAMLET_CLUSTER_BIND_HOST=host): host
        for host in ("127.0.0.2", "127.0.0.3")
    }
    service = ["-D", f"compaction.service.port={port}"]
    job_id = cluster.submit("compaction_service", *ON_COMPACTORS, *SERVICE, *service)
    job = cluster.wait_job(job_id, serving_on(set(hosts)))
    endpoints = {tm: i["endpoints"][0] for tm, i in instances_by_task_manager(job).items()}
    assert endpoints == {tm: f"{host}:{port}" for tm, host in hosts.items()}
    for endpoint in endpoints.values():
        assert health(endpoint) == health_pb2.HealthCheckResponse.SERVING


def test_per_task_manager_submissions_that_cannot_run_are_refused(cluster: Cluster) -> None:
    refused = cluster.cli("submit", "compaction_service", "-p", "2", *PER_TASK_MANAGER)
    assert refused.returncode == 1
    assert "runs one instance of parallelism 1 on every task manager" in refused.stderr
    refused = cluster.cli(
        "submit", "compaction_service", "-s", "/nonexistent/savepoint", *PER_TASK_MANAGER
    )
    assert refused.returncode == 1
    assert "cannot start from a savepoint or checkpoint (-s)" in refused.stderr
    refused = cluster.cli("submit", "compaction_service", "-D", "placement.per-taskmanager=maybe")
    assert refused.returncode == 1 and "placement.per-taskmanager" in refused.stderr


def test_a_restarted_jobmanager_adopts_the_running_instances(cluster: Cluster) -> None:
    tm = cluster.start_taskmanager(slots=1, labels=[LABEL])
    job_id = cluster.submit("compaction_service", *ON_COMPACTORS, *SERVICE)
    (before,) = cluster.wait_job(job_id, serving_on({tm}))["instances"]
    cluster.jobmanager.kill()
    cluster.start_jobmanager()  # same port and HA directory: the task manager registers again
    process = cluster.task_managers[tm]
    wait_until(lambda: process.output().count(f"task manager {tm} registered") == 2, 30, "again")
    job = cluster.wait_job(job_id, serving_on({tm}))
    assert job["instances"] == [before]  # the same deployment and endpoint: not restarted
    assert health(before["endpoints"][0]) == health_pb2.HealthCheckResponse.SERVING
    assert cluster.task_managers[tm].output().count("starting deployment") == 1


def test_bad_labels_and_draining_flags_are_refused(cluster: Cluster) -> None:
    registration = {"id": "tm-x", "host": "h", "slots": 1, "exchange_address": "h:1"}
    for labels in ("compactor", ["a,b"], [""], [3]):
        body = {**registration, "labels": labels}
        status, answer = cluster.api("POST", "/api/v1/taskmanagers", body)
        assert status == 400 and "labels must be a list" in answer["error"], (labels, answer)
    status, _ = cluster.api("POST", "/api/v1/taskmanagers", {**registration, "labels": ["x"]})
    assert status == 200
    status, answer = cluster.api(
        "POST", "/api/v1/taskmanagers/tm-x/heartbeat", {"deployments": [], "draining": "yes"}
    )
    assert status == 400 and "draining must be true or false" in answer["error"]
    assert cluster.api("DELETE", "/api/v1/taskmanagers/tm-x")[0] == 200
    status, answer = cluster.api("DELETE", "/api/v1/taskmanagers/tm-x")
    assert status == 404 and "no task manager tm-x" in answer["error"]
    refused = cluster.cli("taskmanager", "--label", "a,b")
    assert refused.returncode == 2 and "a task manager label holds no ','" in refused.stderr
