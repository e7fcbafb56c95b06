"""EndpointResolver: the address forms (also a DNS server named in a dns:// address, asked
for real), refreshes in the background, failures that keep the last list, and one resolver per
address per process."""

import socket
import threading

import pytest

from compaction_service.client import remote_compactor
from compaction_service.resolver import EndpointResolver, resolve, shared_resolver
from tests.compaction_service.helpers import wait_until
from tests.support.dns_server import DnsServer


def test_a_static_list_is_parsed_once_and_never_refreshed() -> None:
    resolver = EndpointResolver(" a:1, b.example:50051 ,")
    assert resolver.endpoints() == ("a:1", "b.example:50051")
    assert not resolver.dynamic and resolver.refreshes == 0
    resolver.release()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("a", "not host:port"),
        ("a:1,b", "not host:port"),
        ("dns:///name", "not host:port"),
        ("dns:///name:0", "not host:port"),
        ("job:", "need a job name"),
        ("dns:name:1", "a dns address is dns:///name:port"),
        ("dns://127.0.0.1:5353", "a dns address is dns:///name:port"),
        ("dns://dns.example/name:1", "the DNS server 'dns.example' must be an IP address"),
        ("dns://::1/name:1", "an IPv6 DNS server goes in brackets"),
        ("dns://[::1/name:1", "the DNS server '\\[::1' is not \\[ipv6\\]:port"),
        ("dns://127.0.0.1:0/name:1", "the DNS server's port '0' is not 1-65535"),
        ("dns://127.0.0.1:x/name:1", "the DNS server's port 'x' is not 1-65535"),
        ("dns://127.0.0.1/name", "not host:port"),
        ("dns://127.0.0.1/a..b:1", "'a..b' is not a DNS name"),
        (" , ", "names no host:port"),
    ],
)
def test_malformed_addresses_are_named(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointResolver(address, job_lookup=lambda name: [])


def test_job_addresses_need_a_lookup() -> None:
    with pytest.raises(ValueError, match="job:svc: job addresses resolve only inside"):
        EndpointResolver("job:svc")
    assert resolve("job:svc", lambda name: [f"{name}-host:1"]) == ["svc-host:1"]


class FlakyLookup:
    """Answers `endpoints`, or raises while `failing` (a job manager that is unreachable)."""

    def __init__(self) -> None:
        self.endpoints = ["h1:1"]
        self.failing = False
        self.calls = 0
        self.called = threading.Event()

    def __call__(self, name: str) -> list[str]:
        self.calls += 1
        self.called.set()
        if self.failing:
            raise ConnectionRefusedError("job manager down")
        return list(self.endpoints)


def test_a_failed_lookup_keeps_the_last_list_and_a_failure_refreshes_soon() -> None:
    lookup = FlakyLookup()
    resolver = EndpointResolver("job:svc", job_lookup=lookup, interval_s=60.0)
    try:
        wait_until(lambda: resolver.endpoints() == ("h1:1",), what="the first answer")
        lookup.failing = True
        lookup.endpoints = []
        # 60 s interval: only refresh_soon (a client's failure) makes it look again
        resolver.refresh_soon()
        wait_until(lambda: resolver.failures == 1, timeout=10, what="a failed refresh")
        assert resolver.endpoints() == ("h1:1",)
        lookup.failing = False
        resolver.refresh_soon()
        wait_until(lambda: resolver.endpoints() == (), timeout=10, what="the empty answer")
        assert (resolver.refreshes, resolver.failures, resolver.changes) == (3, 1, 2)
    finally:
        resolver.release()


def test_dns_try_again_keeps_the_list_and_no_such_name_empties_it() -> None:
    errors: list[int] = []

    def getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple]:
        if errors:
            raise socket.gaierror(errors[0], "dns says no")
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))] * 2

    resolver = EndpointResolver("dns:///svc.test:50051", interval_s=60.0, getaddrinfo=getaddrinfo)
    try:
        wait_until(lambda: resolver.endpoints() == ("[::1]:50051",), what="the first answer")
        errors.append(socket.EAI_AGAIN)
        resolver.refresh_soon()
        wait_until(lambda: resolver.failures == 1, timeout=10, what="a failed refresh")
        assert resolver.endpoints() == ("[::1]:50051",)
        errors[0] = socket.EAI_NONAME
        resolver.refresh_soon()
        wait_until(lambda: resolver.endpoints() == (), timeout=10, what="no such name")
        assert resolver.failures == 1
    finally:
        resolver.release()


def test_the_same_records_in_another_order_are_no_change() -> None:
    answers = [["10.0.0.2", "10.0.0.10", "::1"], ["::1", "10.0.0.10", "10.0.0.2"]]

    def getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple]:
        answers.append(answers.pop(0))  # round-robin: every lookup answers in another order
        family = {False: socket.AF_INET, True: socket.AF_INET6}
        return [(family[":" in ip], socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[-1]]

    resolver = EndpointResolver("dns:///svc.test:50051", interval_s=60.0, getaddrinfo=getaddrinfo)
    try:
        expected = ("10.0.0.2:50051", "10.0.0.10:50051", "[::1]:50051")  # IPv4 first, by address
        wait_until(lambda: resolver.endpoints() == expected, what="the first answer")
        for refreshes in (2, 3):
            resolver.refresh_soon()
            wait_until(
                lambda n=refreshes: resolver.refreshes >= n, timeout=10, what="a refresh"
            )
            assert resolver.endpoints() == expected
        assert resolver.changes == 1  # the first answer only
    finally:
        resolver.release()


def test_one_resolver_per_address_per_process_and_the_last_user_stops_it() -> None:
    lookup = FlakyLookup()
    first = shared_resolver("job:svc", job_lookup=lookup)
    second = shared_resolver(" job:svc", job_lookup=lookup)
    other = shared_resolver("job:other", job_lookup=lookup)
    assert first is second and first is not other
    options = {"compaction_service_address": "job:svc", "compaction_job_lookup": lookup}
    compactor = remote_compactor({**options, "compaction_service_resolve_interval_s": 2.0}, False)
    assert compactor.resolver is first
    compactor.close()
    first.release()
    other.release()
    assert not first.join(timeout=0.1)  # `second` still uses it
    second.release()
    assert first.join(timeout=10)
    again = shared_resolver("job:svc", job_lookup=lookup)
    assert again is not first  # a new one
    again.release()


def test_a_dns_server_named_in_the_address_is_asked_and_its_changes_followed() -> None:
    server = DnsServer()
    server.set_records("compactors.test", ["127.0.0.2"])
    address = f"dns://{server.address}/compactors.test:50051"
    # 60 s interval: only refresh_soon makes it look again
    resolver = EndpointResolver(address, interval_s=60.0)
    try:
        wait_until(lambda: resolver.endpoints() == ("127.0.0.2:50051",), what="the first answer")
        assert resolver.dynamic and server.queries >= 2  # A and AAAA, at this server

        def after_refresh(expected: tuple[str, ...], what: str) -> None:
            resolver.refresh_soon()
            wait_until(lambda: resolver.endpoints() == expected, timeout=10, what=what)

        server.set_records("compactors.test", ["127.0.0.2", "127.0.0.3", "::1"])
        after_refresh(("127.0.0.2:50051", "127.0.0.3:50051", "[::1]:50051"), "an added record")
        server.set_records("compactors.test", ["127.0.0.3"])
        after_refresh(("127.0.0.3:50051",), "a removed record")
        server.set_records("compactors.test", [])
        after_refresh((), "no record (NOERROR, no answer)")
        server.set_records("compactors.test", ["127.0.0.4"])
        after_refresh(("127.0.0.4:50051",), "a record again")
        server.delete("compactors.test")
        after_refresh((), "NXDOMAIN")
        assert resolver.failures == 0

        server.set_records("compactors.test", ["127.0.0.2"])
        after_refresh(("127.0.0.2:50051",), "the name back")
        server.servfail = True
        resolver.refresh_soon()
        wait_until(lambda: resolver.failures == 1, timeout=10, what="a SERVFAIL")
        assert resolver.endpoints() == ("127.0.0.2:50051",)  # kept
        server.servfail = False
        after_refresh(("127.0.0.2:50051",), "answers again")
        server.stop()
        refreshes = resolver.refreshes
        resolver.refresh_soon()
        wait_until(lambda: resolver.refreshes > refreshes, timeout=10, what="a timed-out lookup")
        assert resolver.failures == 2
        assert resolver.endpoints() == ("127.0.0.2:50051",)  # kept while the server is down
    finally:
        resolver.release()
        server.stop()


def test_an_unknown_name_at_the_dns_server_is_no_endpoint() -> None:
    with DnsServer() as server:
        server.set_records("compactors.test", ["127.0.0.2"])
        assert resolve(f"dns://{server.address}/other.test:50051") == []
        assert server.queries == 1  # NXDOMAIN: no AAAA question after it
        # DNS names are case-insensitive
        assert resolve(f"dns://{server.address}/COMPACTORS.test:1") == ["127.0.0.2:1"]
