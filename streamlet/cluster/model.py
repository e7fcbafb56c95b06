"""What the job manager keeps: job records (persisted as HA metadata) and task managers.

A job is submitted once and deployed one or more times. Attempt n (deployment id `<job id>-<n>`)
places the job's `parallelism` slots on task managers (`placement[i]` runs slot i: subtask i of
every operator); each task manager in the placement runs one deployment of the attempt over its
slots. When a task manager is lost, the job gets a new attempt that restores its latest
checkpoint. A job submitted with `restore_from` (a savepoint or retained checkpoint) starts from
it until it completed a checkpoint of its own. A job record lists the savepoints taken of the
job, newest first (`savepoints`: path, format, time, and whether it stopped the job).

A per-task-manager job (`placement.per-taskmanager`) has no attempts of its own: it has one
`Instance` (a deployment of parallelism 1 with an id `<job id>-<n>`, n counting every instance
the job ever had) on each matching task manager, and its `placement` lists the task managers of
the instances that still run. A job may ask for task managers with a label
(`placement.taskmanager-label`); task managers carry labels (`taskmanager.labels`).
"""

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any


class JobStatus(enum.StrEnum):
    CREATED = "CREATED"  # waiting for free slots
    DEPLOYING = "DEPLOYING"  # assigned to a task manager that has not reported it running yet
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"  # its task manager was lost; waiting for slots elsewhere
    RECOVERING = "RECOVERING"  # the job manager restarted; waiting for its task manager
    CANCELLING = "CANCELLING"
    CANCELED = "CANCELED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.CANCELED, JobStatus.FINISHED, JobStatus.FAILED)


class DeploymentStatus(enum.StrEnum):
    """What a task manager reports about a deployment it runs."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self in (
            DeploymentStatus.FINISHED,
            DeploymentStatus.FAILED,
            DeploymentStatus.CANCELED,
        )


@dataclass
class Artifact:
    """What runs: an importable `module`, or a `file` (a .py job module or a .zip archive with
    `entry`, a .py file inside it) stored with the job's HA metadata, and the module's `args`
    (its `sys.argv[1:]` while it loads)."""

    kind: str  # "module" | "file" | "archive"
    module: str | None = None
    file_name: str | None = None
    entry: str | None = None
    args: list[str] = field(default_factory=list)


@dataclass
class Instance:
    """One instance of a per-task-manager job: its deployment on one task manager."""

    task_manager: str
    deployment_id: str
    status: str = str(DeploymentStatus.STARTING)  # what the task manager reported last
    endpoints: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def live(self) -> bool:
        return not DeploymentStatus(self.status).terminal


@dataclass
class JobRecord:
    id: str
    name: str
    artifact: Artifact
    parallelism: int
    config: dict[str, Any]
    status: JobStatus = JobStatus.CREATED
    attempt: int = 0
    placement: list[str] = field(default_factory=list)
    reported: dict[str, str] = field(default_factory=dict)  # task manager -> DeploymentStatus
    latest_checkpoint: int | None = None
    error: str | None = None
    submitted_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    failovers: int = 0
    failures: int = 0  # restarts after a failure of the job's own code (restart.attempts)
    endpoints: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # of all attempts (counters add up)
    previous_metrics: dict[str, Any] = field(default_factory=dict)  # of the attempts before
    restore_from: str | None = None  # the savepoint or checkpoint the job was submitted from
    savepoints: list[dict[str, Any]] = field(default_factory=list)  # newest first
    per_task_manager: bool = False  # one instance on every matching task manager
    label: str = ""  # only task managers with this label run the job ("": any)
    instances: dict[str, Instance] = field(default_factory=dict)  # task manager -> instance

    @property
    def deployment_id(self) -> str:
        return f"{self.id}-{self.attempt}"

    def deployment_on(self, tm_id: str) -> str | None:
        """The id of the deployment task manager `tm_id` should run for this job, if any."""
        if self.status.terminal:
            return None
        if self.per_task_manager:
            instance = self.instances.get(tm_id)
            return None if instance is None else instance.deployment_id
        return self.deployment_id if tm_id in self.placement else None

    @property
    def task_managers(self) -> list[str]:
        """The task managers of the current attempt, in slot order."""
        return list(dict.fromkeys(self.placement))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "JobRecord":
        data = dict(data)
        data["artifact"] = Artifact(**data["artifact"])
        data["status"] = JobStatus(data["status"])
        data["instances"] = {
            tm: Instance(**instance) for tm, instance in data.get("instances", {}).items()
        }
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """What `list` shows per job."""
        return {
            "id": self.id,
            "name": self.name,
            "status": str(self.status),
            "parallelism": self.parallelism,
            "task_managers": self.task_managers,
            "latest_checkpoint": self.latest_checkpoint,
            "endpoints": list(self.endpoints),
            "failovers": self.failovers,
            "per_task_manager": self.per_task_manager,
            "label": self.label,
        }


@dataclass
class TaskManagerInfo:
    id: str
    host: str
    slots: int
    metrics_url: str | None
    exchange_address: str
    labels: list[str] = field(default_factory=list)
    draining: bool = False  # it received SIGTERM: it gets no new work
    last_heartbeat: float = field(default_factory=time.monotonic)
    registered_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)

    def to_json(self, used_slots: int) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "slots": self.slots,
            "free_slots": self.slots - used_slots,
            "metrics_url": self.metrics_url,
            "exchange_address": self.exchange_address,
            "labels": list(self.labels),
            "draining": self.draining,
            "seconds_since_heartbeat": round(time.monotonic() - self.last_heartbeat, 3),
            "registered_ms": self.registered_ms,
        }


def sum_metrics(parts: Any) -> dict[str, Any]:
    """A job's metrics: the sum over its deployments, and the totals of its earlier attempts
    (the latest checkpoint: the highest)."""
    total: dict[str, Any] = {}
    for metrics in parts:
        for key, value in metrics.items():
            if key == "last_checkpoint_id":
                if value is not None:
                    total[key] = max(value, total.get(key) or 0)
            elif isinstance(value, int | float):
                total[key] = total.get(key, 0) + value
    return total
