"""The Prometheus metrics of every compaction service running in this process.

One collector per process, `SERVICE_METRICS`, registered once (when this module is first
imported) with prometheus_client's default registry; a service adds itself under its endpoint when
it starts serving and removes itself when it stops. So several services in one task manager (a
job with parallelism > 1, or several compactor jobs) each appear as their own `endpoint` label of
the same metrics: `streamlet_compaction_service_{accepted, completed, failed, cancelled,
rejected, input_bytes, output_bytes, cpu_seconds}_total{endpoint}` and
`streamlet_compaction_service_queued{endpoint}`.
"""

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from compaction_service.server import CompactionServer

PREFIX = "streamlet_compaction_service_"


class ServiceMetrics(Collector):
    """The totals of the services added, labelled with their endpoints."""

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

    def __init__(self) -> None:
        self._lock = threading.Lock()  # /metrics may be scraped from another thread
        self._services: dict[CompactionServer, str] = {}

    def add(self, server: CompactionServer, endpoint: str) -> None:
        with self._lock:
            self._services[server] = endpoint

    def remove(self, server: CompactionServer) -> None:
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
        queued = GaugeMetricFamily(
            f"{PREFIX}queued", "Tasks waiting for a worker", labels=["endpoint"]
        )
        for server, endpoint in services:
            queued.add_metric([endpoint], server.dispatcher.scheduler.queued)
        yield queued


SERVICE_METRICS = ServiceMetrics()
REGISTRY.register(SERVICE_METRICS)
