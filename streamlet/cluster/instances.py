"""Per-task-manager jobs (`placement.per-taskmanager`): one instance on every matching task manager.

Such a job is a standing order rather than a set of slots: each task manager that matches the
job's label (`placement.taskmanager-label`; no label: every task manager), is not draining and has
a free slot gets an instance of the job (parallelism 1, one slot), also when it joins long after
the job was submitted. An instance is never moved: when its task manager leaves (lost, deregistered
on SIGTERM, or registered again without it) the instance is forgotten, and the job runs on with
the others. An instance that fails (after its own `restart.attempts` in its task manager) stays
FAILED, with its error, and its task manager gets no other instance of the job.

The job's status follows its instances: CREATED while it has none (waiting for a task manager),
DEPLOYING until one runs, RUNNING while one does; once every instance has ended, FAILED if one
failed, else FINISHED. A cancelled job is CANCELLING until every instance has ended, then CANCELED.
Its endpoints are those of its running instances, so `job:<name>` follows the instances.

Instances are independent runs of the job: each has its own checkpoint and state directories
(`<checkpoint.dir>/instances/<task manager id>`, the same below `state.dir`); the job manager
refuses a per-task-manager job with a parallelism above 1 or a savepoint to start from.
"""

from collections.abc import Iterable
from typing import Any

from streamlet.cluster.model import (
    DeploymentStatus,
    Instance,
    JobRecord,
    JobStatus,
    TaskManagerInfo,
    sum_metrics,
)
from streamlet.cluster.scheduler import matches


def check_submission(parallelism: int | None, restore_from: str | None) -> None:
    """`ValueError` for a per-task-manager submission that asks for what instances cannot do."""
    if parallelism not in (None, 1):
        raise ValueError(
            "a per-task-manager job (placement.per-taskmanager) runs one instance of "
            f"parallelism 1 on every task manager: submit it without -p (not -p {parallelism})"
        )
    if restore_from is not None:
        raise ValueError(
            "a per-task-manager job (placement.per-taskmanager) starts afresh on every task "
            "manager: it cannot start from a savepoint or checkpoint (-s)"
        )


def place_instances(
    job: JobRecord, task_managers: Iterable[TaskManagerInfo], used: dict[str, int]
) -> list[str]:
    """Give every matching task manager with a free slot and no instance of `job` one; `used`
    counts the slots taken (updated). The task managers that got an instance, oldest first."""
    placed = []
    for tm in sorted(task_managers, key=lambda tm: tm.registered_ms):
        if tm.id in job.instances or not matches(tm, job.label) or tm.draining:
            continue
        if tm.slots - used.get(tm.id, 0) < 1:
            continue
        job.attempt += 1
        job.instances[tm.id] = Instance(tm.id, job.deployment_id)
        used[tm.id] = used.get(tm.id, 0) + 1
        placed.append(tm.id)
    return placed


def refresh(job: JobRecord) -> None:
    """Derive the job's placement, endpoints and status from its instances (an ended job's
    status stays)."""
    if job.status.terminal:
        job.placement, job.endpoints = [], []
        return
    instances = list(job.instances.values())
    live = [i for i in instances if i.live]
    running = [i for i in live if i.status == DeploymentStatus.RUNNING]
    job.placement = [i.task_manager for i in live]
    job.endpoints = [endpoint for i in running for endpoint in i.endpoints]
    if job.status is JobStatus.CANCELLING:
        if not live:
            job.status = JobStatus.CANCELED
    elif not instances:
        job.status = JobStatus.CREATED
    elif not live:
        failed = any(i.status == DeploymentStatus.FAILED for i in instances)
        job.status = JobStatus.FAILED if failed else JobStatus.FINISHED
    else:
        job.status = JobStatus.RUNNING if running else JobStatus.DEPLOYING


def apply_report(
    job: JobRecord,
    tm_id: str,
    status: DeploymentStatus,
    report: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
) -> bool:
    """Apply a task manager's report about its instance; `metrics` holds each live instance's
    latest metrics (updated). True if the job's record changed in a way worth saving."""
    instance = job.instances[tm_id]
    before = (job.status, tuple(job.endpoints), instance.status)
    instance.status = str(status)
    instance.endpoints = list(report.get("endpoints", []))
    metrics[tm_id] = report.get("metrics", {})
    job.metrics = sum_metrics([job.previous_metrics, *metrics.values()])
    if status is DeploymentStatus.FAILED:
        instance.error = report.get("error") or "unknown error"
        job.error = f"the instance on task manager {tm_id} failed: {instance.error}"
    refresh(job)
    return (job.status, tuple(job.endpoints), instance.status) != before


def drop(job: JobRecord, tm_ids: Iterable[str], metrics: dict[str, dict[str, Any]]) -> None:
    """Forget the instances on `tm_ids` (their task managers left); what they counted stays in
    the job's metrics."""
    for tm_id in tm_ids:
        del job.instances[tm_id]
        job.previous_metrics = sum_metrics([job.previous_metrics, metrics.pop(tm_id, {})])
    job.metrics = sum_metrics([job.previous_metrics, *metrics.values()])
    refresh(job)


def to_deploy(job: JobRecord, tm_id: str) -> bool:
    """Whether `tm_id` should start its instance (the answer repeats until it reports it)."""
    instance = job.instances.get(tm_id)
    return (
        instance is not None
        and instance.status == DeploymentStatus.STARTING
        and job.status in (JobStatus.DEPLOYING, JobStatus.RUNNING)
    )


def descriptor(job: JobRecord, tm_id: str, exchange_address: str) -> dict[str, Any]:
    """What task manager `tm_id` needs to run its instance: a job of parallelism 1 in one slot,
    with checkpoint and state directories of its own."""
    deployment_id = job.instances[tm_id].deployment_id
    config = dict(job.config)
    for key in ("checkpoint.dir", "state.dir"):
        config[key] = f"{str(job.config[key]).rstrip('/')}/instances/{tm_id}"
    return {
        "deployment_id": deployment_id,
        "job_id": job.id,
        "name": job.name,
        "attempt": int(deployment_id.rsplit("-", 1)[1]),
        "parallelism": 1,
        "slots": [0],
        "slot_addresses": [exchange_address],
        "config": config,
        "artifact": dict(vars(job.artifact)),
        "restore_from": None,
    }
