"""RemoteCompactor over endpoints that come and go (a resolver whose answer changes), balanced by
outstanding bytes, against real in-process services."""

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from compaction_service.client import FALLBACK_REASONS, RemoteCompactor, remote_compactor
from compaction_service.resolver import EndpointResolver
from statebackend.lsm.compaction_job import CompactionSpec, run_compaction
from tests.compaction_service.helpers import (
    blocking_compaction,
    gated_compaction,
    make_spec,
    read_outputs,
    table_names,
    wait_until,
    write_tables,
)
from tests.support.ports import free_port


class Answers:
    """A `job:` lookup whose answer the test changes; counts the lookups."""

    def __init__(self, *endpoints: str) -> None:
        self.endpoints = list(endpoints)
        self.calls = 0
        self._lock = threading.Lock()

    def set(self, *endpoints: str) -> None:
        with self._lock:
            self.endpoints = list(endpoints)

    def __call__(self, name: str) -> list[str]:
        with self._lock:
            self.calls += 1
            return list(self.endpoints)


def accepted(running: Any) -> int:
    return running.service.server.dispatcher.totals.accepted


def remote(compactor: RemoteCompactor, spec: CompactionSpec, timeout: float = 60) -> bool:
    """Run `spec` through the compactor; whether the service computed the result."""
    return compactor.submit(spec, {}).result(timeout=timeout).remote


def local(root: str) -> Path:
    return Path(root.removeprefix("file://"))


def lists(resolver: EndpointResolver, *endpoints: str) -> Callable[[], bool]:
    return lambda: resolver.endpoints() == tuple(endpoints)


def test_a_new_endpoint_gets_work_at_once_and_a_removed_one_finishes_its_call(
    start_service, compactors
) -> None:
    gated = start_service(compaction_fn=gated_compaction)
    fast = start_service()
    root = f"{gated.root}/db"
    inputs = write_tables(root, tables=2, entries=300)
    answers = Answers(gated.address)
    interval = 1.0
    resolver = EndpointResolver("job:compaction-service", job_lookup=answers, interval_s=interval)
    compactor = compactors(resolver, deadline_s=60)
    wait_until(lists(resolver, gated.address), timeout=15, what="the first resolution")

    held = compactor.submit(make_spec(root, inputs), {})  # in flight on `gated` until the gate
    wait_until(lambda: any(Path(local(root)).glob("started-*")), what="the held call started")

    answers.set(fast.address)  # `fast` starts, `gated` leaves
    started = time.monotonic()
    refreshes = resolver.refreshes
    # The refresh running now may have missed the change; the next one starts after it.
    wait_until(lambda: resolver.refreshes >= refreshes + 2, timeout=15, what="two refreshes")
    assert resolver.endpoints() == (fast.address,)
    assert resolver.changes == 2  # nothing -> [gated] -> [fast]
    for _ in range(3):
        assert remote(compactor, make_spec(root, inputs))
    assert time.monotonic() - started < 15
    assert (accepted(gated), accepted(fast)) == (1, 3)  # the unlisted endpoint got no new work
    assert not held.done()

    (Path(local(root)) / "gate").touch()
    result = held.result(timeout=60)  # the call in flight on the unlisted endpoint finishes
    assert result.remote and read_outputs(root, result) == read_outputs(
        root, run_compaction(make_spec(root, inputs))
    )
    s = compactor.stats
    assert (s.remote_ok, s.remote_failed, s.fallbacks) == (4, 0, 0)
    remote(compactor, make_spec(root, inputs))  # the next submit drops the idle, unlisted one
    assert compactor.breaker(gated.address) is None and compactor.breaker(fast.address)


def test_work_goes_to_the_endpoint_with_the_least_outstanding_bytes(
    start_service, compactors
) -> None:
    slow = start_service(compaction_fn=blocking_compaction)
    fast = start_service()
    root = f"{slow.root}/db"
    inputs = write_tables(root, tables=2, entries=300)
    compactor = compactors([slow.address, fast.address], deadline_s=20)
    stuck = compactor.submit(make_spec(root, inputs), {})  # both idle: the first listed
    wait_until(lambda: any("partial" in n for n in table_names(root)), what="the slow one runs")
    for _ in range(4):  # not by turns: the slow service never gets a second one
        assert remote(compactor, make_spec(root, inputs))
    assert (accepted(slow), accepted(fast)) == (1, 4)
    assert stuck.cancel()


def test_bytes_outweigh_the_number_of_calls(start_service, compactors) -> None:
    first = start_service(compaction_fn=gated_compaction)
    second = start_service(compaction_fn=gated_compaction, queue_capacity=8)
    root = f"{first.root}/db"
    big = write_tables(root, tables=4, entries=2000)
    small = write_tables(root, tables=1, entries=100, seed=2)
    compactor = compactors([first.address, second.address], deadline_s=60)
    futures = [compactor.submit(make_spec(root, big), {})]  # -> first (both idle)
    # -> second each time: its queued small specs stay below first's one big spec, although
    # it has more calls in flight
    futures += [compactor.submit(make_spec(root, small), {}) for _ in range(3)]
    wait_until(lambda: accepted(first) + accepted(second) == 4, what="all four calls accepted")
    assert (accepted(first), accepted(second)) == (1, 3)
    (Path(local(root)) / "gate").touch()
    assert all(f.result(timeout=60).remote for f in futures)


def test_no_endpoint_compacts_locally_until_the_lookup_answers(
    start_service, compactors, tmp_path
) -> None:
    answers = Answers()  # the service job has not started yet
    resolver = EndpointResolver("job:compaction-service", job_lookup=answers, interval_s=1.0)
    compactor = compactors(resolver)
    wait_until(lambda: resolver.refreshes >= 1, what="the first resolution")
    root = f"file://{tmp_path}/allowed/db"
    inputs = write_tables(root, tables=2, entries=300)
    assert not remote(compactor, make_spec(root, inputs))
    assert compactor.stats.fallbacks_by_reason == {
        **dict.fromkeys(FALLBACK_REASONS, 0),
        "no_endpoint": 1,
    }

    service = start_service()  # started after the job, then registered
    answers.set(service.address)
    wait_until(lambda: remote(compactor, make_spec(root, inputs)), timeout=15, what="remote")
    assert compactor.stats.remote_ok == 1 and compactor.stats.remote_failed == 0


class Dns:
    """A `getaddrinfo` over names the test sets: each name's IPv4 addresses."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}

    def __call__(self, host: str, port: int, **kwargs: object) -> list[tuple]:
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in self.names[host]]


def test_dns_over_a_list_that_changes(start_service, compactors, tmp_path) -> None:
    port = free_port()  # a headless Service: every pod on the same port, each its own IP
    pods = {ip: start_service(host=ip, port=port) for ip in ("127.0.0.2", "127.0.0.3")}
    dns = Dns()
    dns.names["compactors.test"] = ["127.0.0.2"]
    resolver = EndpointResolver(f"dns:///compactors.test:{port}", interval_s=0.5, getaddrinfo=dns)
    compactor = compactors(resolver)
    root = f"{pods['127.0.0.2'].root}/db"
    inputs = write_tables(root, tables=2, entries=300)
    wait_until(lists(resolver, f"127.0.0.2:{port}"), what="the first answer")
    assert remote(compactor, make_spec(root, inputs))

    dns.names["compactors.test"] = ["127.0.0.2", "127.0.0.3"]  # a pod joins
    wait_until(lists(resolver, f"127.0.0.2:{port}", f"127.0.0.3:{port}"), what="two pods")
    assert remote(compactor, make_spec(root, inputs))
    assert accepted(pods["127.0.0.3"]) == 1  # idle and never used: the new pod got it

    dns.names["compactors.test"] = ["127.0.0.3"]  # a pod leaves
    wait_until(lists(resolver, f"127.0.0.3:{port}"), what="one pod")
    for _ in range(2):
        assert remote(compactor, make_spec(root, inputs))
    assert (accepted(pods["127.0.0.2"]), accepted(pods["127.0.0.3"])) == (1, 3)

    del dns.names["compactors.test"]  # no pod ready: the name does not resolve
    wait_until(lists(resolver), what="no pod")
    assert not remote(compactor, make_spec(root, inputs))
    assert compactor.stats.fallbacks_by_reason["no_endpoint"] == 1


def test_the_remote_modes_clients_export_their_fallbacks(tmp_path) -> None:
    address = f"job:compaction-service-{tmp_path.name}"  # a label no other test uses
    options = {
        "compaction_service_address": address,
        "compaction_job_lookup": Answers(),
        "compaction_service_resolve_interval_s": 0.5,
    }
    compactor = remote_compactor(options, False)
    try:
        wait_until(lambda: compactor.resolver.refreshes >= 1, what="the first resolution")
        root = f"file://{tmp_path}/db"
        assert not remote(compactor, make_spec(root, write_tables(root, tables=2, entries=100)))
    finally:
        compactor.close()
    exported = generate_latest(REGISTRY).decode()
    line = (
        f'streamlet_compaction_client_fallbacks_total{{address="{address}",reason="no_endpoint"}}'
    )
    assert f"{line} 1.0" in exported


def test_a_call_on_an_endpoint_that_left_and_died_is_retried_elsewhere(
    start_service, compactors
) -> None:
    gated = start_service(compaction_fn=gated_compaction)
    fast = start_service()
    root = f"{gated.root}/db"
    inputs = write_tables(root, tables=2, entries=300)
    answers = Answers(gated.address)
    resolver = EndpointResolver("job:compaction-service", job_lookup=answers, interval_s=0.5)
    compactor = compactors(resolver, deadline_s=60)
    wait_until(lists(resolver, gated.address), timeout=15, what="the first resolution")
    held = compactor.submit(make_spec(root, inputs), {})
    wait_until(lambda: any(local(root).glob("started-*")), what="the held call started")
    answers.set(fast.address)
    wait_until(lists(resolver, fast.address), timeout=15, what="the resolver sees the change")
    gated.service.stop()  # the instance that left dies with the call in flight
    result = held.result(timeout=60)
    assert result.remote and accepted(fast) == 1  # retried on the listed instance
    s = compactor.stats
    assert (s.remote_ok, s.failures_by_code, s.fallbacks) == (1, {"UNAVAILABLE": 1}, 0)
