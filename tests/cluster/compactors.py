"""Helpers for tests of the compactor tier on a cluster (`tests.cluster.harness`): submitting the
compaction service on every labelled task manager, waiting until it serves there, its health, and
stopping a task manager as Kubernetes does (SIGTERM to it alone).

    tm = cluster.start_taskmanager(slots=1, labels=[LABEL])
    job_id = cluster.submit("compaction_service", *ON_COMPACTORS, *SERVICE)
    endpoints = cluster.wait_job(job_id, serving_on({tm}))["endpoints"]
    signalled_at = sigterm(cluster.task_managers[tm])   # it drains, then exits
"""

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import ManagedProcess

LABEL = "compactor"
PER_TASK_MANAGER = ["-D", "placement.per-taskmanager=true"]
ON_COMPACTORS = [*PER_TASK_MANAGER, "-D", f"placement.taskmanager-label={LABEL}"]
SERVICE = ["-D", "compaction.service.workers=1"]


def health(endpoint: str) -> int:
    """The service's gRPC health status (health_pb2.HealthCheckResponse.*)."""
    with grpc.insecure_channel(endpoint) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return answer.status


def instances_by_task_manager(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {instance["task_manager"]: instance for instance in job["instances"]}


def serving_on(task_managers: set[str]) -> Callable[[dict[str, Any]], bool]:
    """A `Cluster.wait_job` condition: the job runs exactly on `task_managers`, each instance
    serving one registered endpoint."""

    def condition(job: dict[str, Any]) -> bool:
        instances = instances_by_task_manager(job).values()
        return (
            job["status"] == "RUNNING"
            and {i["task_manager"] for i in instances} == task_managers
            and all(i["status"] == "RUNNING" and len(i["endpoints"]) == 1 for i in instances)
            and len(job["endpoints"]) == len(task_managers)
        )

    return condition


def sigterm(process: ManagedProcess) -> float:
    """SIGTERM the process alone (as Kubernetes signals a container's first process: its
    worker processes are not signalled); when it was sent (time.monotonic)."""
    assert process.pid is not None
    os.kill(process.pid, signal.SIGTERM)
    return time.monotonic()
