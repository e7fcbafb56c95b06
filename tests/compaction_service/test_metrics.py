"""The compaction service's Prometheus metrics (`compaction_service.metrics`), read from the
process's default registry as a task manager serves them, while compactions that block hold its
workers: queued tasks and bytes, busy and total workers, the wait before a task starts, and the
autoscaling gauge, which must equal its documented formula; also the clients' fallbacks."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from compaction_service.client import RemoteCompactor
from compaction_service.convert import spec_to_proto
from compaction_service.metrics import CLIENT_METRICS, SERVICE_METRICS
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.subcompactions import input_bytes
from tests.compaction_service.conftest import Running
from tests.compaction_service.helpers import (
    blocking_compaction,
    make_spec,
    wait_until,
    write_tables,
)
from tests.support.ports import free_port

PREFIX = "streamlet_compaction_service_"


def samples(**labels: str) -> dict[str, float]:
    """Every sample of the default registry whose labels include `labels`: name (with the
    histogram's `le` appended to a bucket's name) -> value."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                le = sample.labels.get("le")
                found[sample.name + (f"[{le}]" if le else "")] = sample.value
    return found


@pytest.fixture
def blocked(start_service: Callable[..., Running]) -> Iterator[Running]:
    """A service with two workers whose compactions block until their worker is killed, in the
    metrics as a task manager serves them."""
    running = start_service(workers=2, compaction_fn=blocking_compaction)
    SERVICE_METRICS.add(running.service.server, running.address)
    yield running
    SERVICE_METRICS.remove(running.service.server)


def test_queue_workers_waits_and_load_while_compactions_block(
    blocked: Running, tmp_path: Path
) -> None:
    specs = []
    for n in range(3):  # three databases, so the per-database share of the queue never binds
        root = f"{blocked.root}/db{n}"
        specs.append(make_spec(root, write_tables(root, tables=2, entries=50 + 50 * n, seed=n)))
    stub = blocked.stub()
    endpoint = {"endpoint": blocked.address}
    idle = samples(**endpoint)
    assert idle[PREFIX + "workers"] == 2 and idle[PREFIX + "workers_busy"] == 0
    assert idle[PREFIX + "load"] == 0 and idle[PREFIX + "task_wait_seconds_count"] == 0

    def state() -> tuple[float, float]:
        figures = samples(**endpoint)
        return figures[PREFIX + "workers_busy"], figures[PREFIX + "queued"]

    # One after the other; round robin: the first and the third go to worker 0, the second to
    # worker 1, so the third waits in worker 0's queue.
    calls = []
    for spec, expected in zip(specs, [(1, 0), (2, 0), (2, 1)], strict=True):
        calls.append(stub.Compact.future(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=120))
        wait_until(lambda e=expected: state() == e, what=f"(busy, queued) == {expected}")
    busy = samples(**endpoint)
    assert busy[PREFIX + "queued_bytes"] == input_bytes(specs[2])
    assert busy[PREFIX + "load"] == (2 + 1) / 2  # (busy workers + queued tasks) / workers
    assert busy[PREFIX + "task_wait_seconds_count"] == 2  # the two that started
    assert busy[PREFIX + "task_wait_seconds_bucket[0.1]"] == 2  # at once
    assert busy[PREFIX + "accepted_total"] == 3

    time.sleep(0.5)
    calls[0].cancel()  # its worker is killed and replaced; then the third task starts there
    wait_until(lambda: samples(**endpoint)[PREFIX + "task_wait_seconds_count"] == 3,
               timeout=60, what="the queued task started")  # fmt: skip
    started = samples(**endpoint)
    assert started[PREFIX + "queued"] == 0 and started[PREFIX + "queued_bytes"] == 0
    assert started[PREFIX + "workers_busy"] == 2
    assert started[PREFIX + "load"] == (2 + 0) / 2
    assert started[PREFIX + "task_wait_seconds_sum"] >= 0.5
    assert started[PREFIX + "task_wait_seconds_bucket[0.25]"] == 2  # the third waited longer
    assert started[PREFIX + "task_wait_seconds_bucket[+Inf]"] == 3

    for call in calls[1:]:
        call.cancel()
    wait_until(lambda: samples(**endpoint)[PREFIX + "workers_busy"] == 0, timeout=60,
               what="the workers stopped")  # fmt: skip
    assert samples(**endpoint)[PREFIX + "load"] == 0
    for call in calls:
        with pytest.raises(grpc.FutureCancelledError):
            call.result()


def test_a_client_exports_its_fallbacks_by_reason(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    root = f"file://{tmp_path}/db"
    spec = make_spec(root, write_tables(root, tables=2, entries=50))
    client = RemoteCompactor([address], deadline_s=5, failure_threshold=100)
    try:
        CLIENT_METRICS.track(client, address)
        CLIENT_METRICS.track(client, address)  # once is enough
        client.submit(spec, {}).result(timeout=60)  # falls back: the service is unavailable
        reasons = client.stats.fallbacks_by_reason
        assert sum(reasons.values()) == client.stats.fallbacks == 1
        exported = {
            labels["reason"]: value
            for name, labels, value in _client_samples()
            if labels["address"] == address
        }
        assert exported == {reason: float(count) for reason, count in reasons.items()}
    finally:
        client.close()


def _client_samples() -> Iterator[tuple[str, dict[str, str], float]]:
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if family.name == "streamlet_compaction_client_fallbacks":
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value
