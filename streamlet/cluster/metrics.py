"""Prometheus metrics of the job manager and the task managers, rendered on `GET /metrics`.

Each process has its own registry with one collector that reads the live state at scrape time
(jobs by status, slots, per-job records, checkpoints, failovers and compactions), followed by
prometheus_client's default registry: process CPU and memory, and the metrics jobs publish there
(the compaction service job's requests, queue, workers and load; the compaction clients'
fallbacks: `compaction_service.metrics`). Per-job series are labelled `job_id` and `job_name`.
The job manager's per-job counters add up all attempts of a job (they do not fall back when it
fails over); a task manager's count its own deployments. A task manager also serves the
compaction debt of each state database its deployments hold (`streamlet_lsm_*`, labelled
`job_id`, `job_name`, `operator` (its uid) and `subtask`; write stalls also `kind` and `cause`).
Every metric is described in docs/metrics.md.
"""

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from streamlet.cluster.model import JobStatus
from streamlet.metrics import DatabaseMetrics

if TYPE_CHECKING:
    from streamlet.cluster.jobmanager import JobManager
    from streamlet.cluster.taskmanager import TaskManager

JOB_COUNTERS = {
    "records_in": "Records read by the job's sources",
    "records_out": "Records written by the job's sinks",
    "checkpoints": "Checkpoints completed by the job",
    "compactions_local": "LSM compactions run in the job's process",
    "compactions_remote": "LSM compactions offloaded to the compaction service",
    "compaction_cpu_seconds_local": "CPU seconds the job's process spent compacting",
    "compaction_cpu_seconds_remote": "CPU seconds the compaction service spent for the job",
}


# `job_name`, not `job`: Prometheus sets `job` on every target (the scrape job's name)
JOB_LABELS = ["job_id", "job_name"]
DATABASE_LABELS = [*JOB_LABELS, "operator", "subtask"]
STALL_LABELS = [*DATABASE_LABELS, "kind", "cause"]


def _job_counters(prefix: str, rows: list[tuple[list[str], dict]]) -> Iterator[Metric]:
    """One counter family per job metric; `rows` are (label values, metrics) per job."""
    for key, doc in JOB_COUNTERS.items():
        family = CounterMetricFamily(f"{prefix}_{key}", doc, labels=JOB_LABELS)
        for labels, values in rows:
            family.add_metric(labels, float(values.get(key, 0) or 0))
        yield family


def _database_metrics(rows: list[tuple[list[str], DatabaseMetrics]]) -> Iterator[Metric]:
    """The compaction debt of state databases; `rows` are (job label values, figures) per DB.
    Databases with the same labels (a deployment ending while the next attempt starts on this
    task manager) add up: a scrape must not have two series with the same labels."""
    debt: dict[tuple[str, ...], list[float]] = {}  # labels -> [l0 files, pending bytes]
    stalls: dict[tuple[str, ...], list[float]] = {}  # labels, kind, cause -> [count, seconds]
    for job, db in rows:
        labels = (*job, db.operator, str(db.subtask))
        _add(debt, labels, (db.l0_files, db.pending_compaction_bytes))
        for (kind, cause), figures in db.stalls.items():
            _add(stalls, (*labels, kind, cause), figures)
    l0 = GaugeMetricFamily(
        "streamlet_lsm_l0_files", "Tables in level 0 (a read checks each)", labels=DATABASE_LABELS
    )
    pending = GaugeMetricFamily(
        "streamlet_lsm_pending_compaction_bytes",
        "Bytes compactions would rewrite to bring every level under its target",
        labels=DATABASE_LABELS,
    )
    for labels, (files, pending_bytes) in debt.items():
        l0.add_metric(list(labels), files)
        pending.add_metric(list(labels), pending_bytes)
    count = CounterMetricFamily(
        "streamlet_lsm_write_stalls", "Write stalls by kind and cause", labels=STALL_LABELS
    )
    seconds = CounterMetricFamily(
        "streamlet_lsm_write_stall_seconds",
        "Seconds writers spent stalled, by kind and cause",
        labels=STALL_LABELS,
    )
    for labels, (stalled, stalled_seconds) in stalls.items():
        count.add_metric(list(labels), stalled)
        seconds.add_metric(list(labels), stalled_seconds)
    yield from (l0, pending, count, seconds)


def _add(
    sums: dict[tuple[str, ...], list[float]], labels: tuple[str, ...], values: tuple[float, ...]
) -> None:
    """Add `values` to the sums of `labels`, element by element."""
    total = sums.setdefault(labels, [0.0] * len(values))
    for i, value in enumerate(values):
        total[i] += value


class _Registry:
    def __init__(self, collector: Collector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def render(self) -> tuple[bytes, str]:
        """This process's cluster metrics, then the default registry's (the process collectors
        and what the jobs it runs publish there, e.g. the compaction service job)."""
        return generate_latest(self.registry) + generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JobManagerMetrics(_Registry):
    def __init__(self, manager: "JobManager") -> None:
        super().__init__(_JobManagerCollector(manager))


class _JobManagerCollector(Collector):
    def __init__(self, manager: "JobManager") -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        manager = self.manager
        jobs = GaugeMetricFamily("streamlet_jobmanager_jobs", "Jobs by status", labels=["status"])
        for status in JobStatus:
            count = sum(1 for job in manager.jobs.values() if job.status is status)
            jobs.add_metric([str(status)], count)
        yield jobs
        yield GaugeMetricFamily(
            "streamlet_jobmanager_task_managers",
            "Registered task managers",
            value=len(manager.task_managers),
        )
        total = sum(tm.slots for tm in manager.task_managers.values())
        used = manager.used_slots()
        yield GaugeMetricFamily(
            "streamlet_jobmanager_slots", "Slots of all task managers", value=total
        )
        yield GaugeMetricFamily(
            "streamlet_jobmanager_slots_free",
            "Free slots of all task managers",
            value=total - sum(used.get(tm, 0) for tm in manager.task_managers),
        )
        failovers = CounterMetricFamily(
            "streamlet_job_failovers",
            "Redeployments after a task manager was lost",
            labels=JOB_LABELS,
        )
        rows = []
        for job in manager.jobs.values():
            failovers.add_metric([job.id, job.name], job.failovers)
            rows.append(([job.id, job.name], job.metrics))
        yield failovers
        yield from _job_counters("streamlet_job", rows)


class TaskManagerMetrics(_Registry):
    def __init__(self, task_manager: "TaskManager") -> None:
        super().__init__(_TaskManagerCollector(task_manager))


class _TaskManagerCollector(Collector):
    def __init__(self, task_manager: "TaskManager") -> None:
        self.task_manager = task_manager

    def collect(self) -> Iterator[Metric]:
        tm = self.task_manager
        running = [d for d in tm.deployments.values() if not d.status.terminal]
        yield GaugeMetricFamily("streamlet_taskmanager_slots", "Slots", value=tm.slots)
        yield GaugeMetricFamily(
            "streamlet_taskmanager_slots_used",
            "Slots taken by running deployments",
            value=sum(d.parallelism for d in running),
        )
        yield from _job_counters(
            "streamlet_taskmanager_job",
            [([d.job_id, d.name], d.metrics_snapshot()) for d in running],
        )
        yield from _database_metrics(
            [([d.job_id, d.name], db) for d in running for db in d.metrics.databases()]
        )
