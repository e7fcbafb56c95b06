"""The Prometheus metrics of the compaction services and compaction clients of this process.

Services: one collector per process, `SERVICE_METRICS`, registered once (when this module is
first imported) with prometheus_client's default registry; a service adds itself under its
endpoint when it starts serving and removes itself when it stops. So several services in one task
manager (a job with parallelism > 1, or several compactor jobs) each appear as their own
`endpoint` label of the same metrics:
- counters `streamlet_compaction_service_{accepted, completed, failed, cancelled, rejected,
  input_bytes, output_bytes, cpu_seconds}_total`;
- gauges `_queued` (tasks waiting for a worker), `_queued_bytes` (their input bytes), `_workers`
  and `_workers_busy`;
- the histogram `_task_wait_seconds` (how long a task waited before a worker started it);
- the autoscaling gauge `_load` = (busy workers + queued tasks) / workers: 1 when every worker is
  busy and nothing waits, above 1 when tasks queue (`service_load`).

Clients: `CLIENT_METRICS` (registered the same way) exports the fallbacks of the compaction
clients a process tracks (`track`), by the address they were configured with and the reason:
`streamlet_compaction_client_fallbacks_total{address, reason}`, from their stats'
`fallbacks_by_reason`. A client's counts stay after it is closed (a counter never falls back).

Every metric is described in docs/metrics.md.
"""

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from compaction_service.scheduler import Scheduler
    from compaction_service.server import CompactionServer

PREFIX = "streamlet_compaction_service_"


def service_load(scheduler: "Scheduler") -> float:
    """The autoscaling gauge: (busy workers + queued tasks) / workers."""
    return (scheduler.busy + scheduler.queued) / len(scheduler.running)


class ServiceMetrics(Collector):
    """The figures of the services added, labelled with their endpoints."""

    COUNTERS = {
        "accepted": "Compaction requests accepted",
        "completed": "Compaction tasks completed",
        "failed": "Compaction tasks failed",
        "cancelled": "Compaction tasks cancelled",
        "rejected": "Requests rejected because the queue was full",
        "input_bytes": "Table bytes read",
        "output_bytes": "Table bytes written",
        "cpu_seconds": "CPU seconds spent compacting (moved off the jobs)",
    }
    GAUGES = {
        "queued": ("Tasks waiting for a worker", lambda s: s.queued),
        "queued_bytes": ("Input bytes of the tasks waiting for a worker", lambda s: s.queued_bytes),
        "workers": ("Worker processes", lambda s: len(s.running)),
        "workers_busy": ("Worker processes running a task", lambda s: s.busy),
        "load": ("(busy workers + queued tasks) / workers: the autoscaling gauge", service_load),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()  # /metrics may be scraped from another thread
        self._services: dict[CompactionServer, str] = {}

    def add(self, server: "CompactionServer", endpoint: str) -> None:
        with self._lock:
            self._services[server] = endpoint

    def remove(self, server: "CompactionServer") -> None:
        with self._lock:
            self._services.pop(server, None)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            services = list(self._services.items())
        for key, doc in self.COUNTERS.items():
            counter = CounterMetricFamily(f"{PREFIX}{key}", doc, labels=["endpoint"])
            for server, endpoint in services:
                counter.add_metric([endpoint], float(getattr(server.dispatcher.totals, key)))
            yield counter
        for key, (doc, read) in self.GAUGES.items():
            gauge = GaugeMetricFamily(f"{PREFIX}{key}", doc, labels=["endpoint"])
            for server, endpoint in services:
                gauge.add_metric([endpoint], read(server.dispatcher.scheduler))
            yield gauge
        waits = HistogramMetricFamily(
            f"{PREFIX}task_wait_seconds",
            "Seconds a task waited in a queue before a worker started it",
            labels=["endpoint"],
        )
        for server, endpoint in services:
            histogram = server.dispatcher.waits
            waits.add_metric([endpoint], histogram.buckets(), histogram.sum)
        yield waits


class ClientMetrics(Collector):
    """The fallbacks of the compaction clients tracked, by configured address and reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: list[tuple[str, Any]] = []  # (address, the client's stats)

    def track(self, client: Any, address: str) -> None:
        """Export `client`'s fallbacks (its `stats.fallbacks_by_reason`) under `address`
        (once: tracking it again changes nothing)."""
        with self._lock:
            if all(stats is not client.stats for _, stats in self._clients):
                self._clients.append((address, client.stats))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            clients = list(self._clients)
        sums: dict[tuple[str, str], int] = {}
        for address, stats in clients:
            for reason, count in dict(getattr(stats, "fallbacks_by_reason", {})).items():
                sums[address, reason] = sums.get((address, reason), 0) + count
        fallbacks = CounterMetricFamily(
            "streamlet_compaction_client_fallbacks",
            "Compactions run locally instead of on a compaction service, by reason",
            labels=["address", "reason"],
        )
        for labels, count in sorted(sums.items()):
            fallbacks.add_metric(list(labels), float(count))
        yield fallbacks


SERVICE_METRICS = ServiceMetrics()
REGISTRY.register(SERVICE_METRICS)
CLIENT_METRICS = ClientMetrics()
REGISTRY.register(CLIENT_METRICS)
