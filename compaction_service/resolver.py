"""Compaction service endpoints, resolved continuously: `EndpointResolver` and `shared_resolver`.

A compaction service address (`compaction.service.address`) takes these forms:
- `host:port[,host:port...]`: a static list;
- `dns:///name:port`: every address `name` resolves to through the system resolver
  (`getaddrinfo`: /etc/hosts, the search domains of resolv.conf), as behind a Kubernetes headless
  Service (one record per ready pod);
- `dns://server-ip[:port]/name:port`: the same, but asking the DNS server at `server-ip` (port 53
  unless given; an IPv6 address goes in brackets) directly for the A and AAAA records of `name`
  (with dnspython), as gRPC's naming spec has it: no /etc/hosts, no search domains;
- `job:<name>`: the endpoints the cluster's running jobs named <name> registered. This package
  does not import the runtime (`streamlet.cluster`): the runtime injects the lookup (a `JobLookup`,
  a job name -> its `host:port`s) where it assembles the program.

An `EndpointResolver` owns the current endpoint list of one address. For `dns:` and `job:` a
daemon thread refreshes it every `interval_s`, and soon after a client reports a failure
(`refresh_soon`; at most one refresh per `MIN_REFRESH_GAP_S`): lookups never run on an event loop
or in a caller, and reading the list (`endpoints()`) never waits. A lookup that fails (the job
manager unreachable, DNS answering "try again", SERVFAIL or not answering within
`DNS_TIMEOUT_S`) keeps the last list; a name that does not exist (NXDOMAIN), a name without
address records, or a job that does not run resolves to no endpoint. A static list is parsed once
and never changes (no thread). A malformed address is a ValueError when the resolver is made.

`shared_resolver` gives one resolver per address (with its lookup and interval) per process,
shared by every compactor that uses it; each user `release`s it, the last release stops it.
"""

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name
import dns.resolver

log = logging.getLogger(__name__)

JobLookup = Callable[[str], list[str]]
"""The `host:port` endpoints of the running jobs named so (blocking: called from a thread)."""
AddressInfo = Callable[..., list[tuple[Any, ...]]]
"""`socket.getaddrinfo` or a function like it (tests inject one whose answer changes)."""

DEFAULT_INTERVAL_S = 2.0
MIN_REFRESH_GAP_S = 0.5
DNS_TIMEOUT_S = 2.0
"""How long one lookup at a DNS server named in the address may take (both record types)."""
DNS_FORMS = "dns:///name:port (system resolver) or dns://server-ip[:port]/name:port"
# The resolvers `shared_resolver` made, by address, lookup, interval and getaddrinfo.
_shared: dict[tuple[Any, ...], "EndpointResolver"] = {}
_shared_lock = threading.Lock()
# getaddrinfo errors that mean "no such name" (an answer: no endpoint), not "try again".
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def _check_host_port(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {address!r}")
    return address


@dataclass(frozen=True)
class _Target:
    """A parsed address: a static list, a DNS name and port (and the DNS server to ask, if the
    address names one), or a job name."""

    kind: str  # "static" | "dns" | "job"
    static: tuple[str, ...] = ()
    host: str = ""
    port: int = 0
    dns_server: tuple[str, int] | None = None  # (IP, port); None: the system resolver
    job: str = ""


def _parse_dns_server(authority: str, address: str) -> tuple[str, int]:
    """The (IP, port) of `dns://<authority>/...`: `ip`, `ip:port`, `[ipv6]` or `[ipv6]:port`."""
    port: str | None
    if authority.startswith("["):
        ip, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{address!r}: the DNS server {authority!r} is not [ipv6]:port")
        port = rest[1:] if rest else None
    elif authority.count(":") > 1:
        raise ValueError(
            f"{address!r}: an IPv6 DNS server goes in brackets: dns://[{authority}]:53/name:port"
        )
    else:
        ip, colon, port_text = authority.partition(":")
        port = port_text if colon else None
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise ValueError(
            f"{address!r}: the DNS server {ip!r} must be an IP address (a name would need DNS "
            "to find DNS): " + DNS_FORMS
        ) from None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{address!r}: the DNS server's port {port!r} is not 1-65535")
    return ip, int(port) if port is not None else 53


def _parse_dns(address: str) -> _Target:
    authority, slash, name = address[len("dns://") :].partition("/")
    if not slash:
        raise ValueError(f"{address!r}: a dns address is {DNS_FORMS}")
    host, _, port = _check_host_port(name).rpartition(":")
    server = _parse_dns_server(authority, address) if authority else None
    if server is not None:
        try:
            dns.name.from_text(host)
        except dns.exception.DNSException as e:
            raise ValueError(f"{address!r}: {host!r} is not a DNS name: {e}") from None
    return _Target("dns", host=host, port=int(port), dns_server=server)


def _parse(address: str) -> _Target:
    address = address.strip()
    if address.startswith("job:"):
        name = address[len("job:") :].strip()
        if not name:
            raise ValueError("job: addresses need a job name, e.g. job:compaction-service")
        return _Target("job", job=name)
    if address.startswith("dns://"):
        return _parse_dns(address)
    if address.startswith("dns:"):
        raise ValueError(f"{address!r}: a dns address is {DNS_FORMS}")
    parts = (part.strip() for part in address.split(","))
    return _Target("static", static=tuple(_check_host_port(part) for part in parts if part))


def _endpoints(ips: list[str], port: int) -> list[str]:
    """`ip:port` (`[ip]:port` for IPv6) of each address, once, IPv4 first, in address order: a
    DNS server may answer the same records in any order (round-robin), which is no change."""
    addresses = sorted(
        {ipaddress.ip_address(ip) for ip in ips}, key=lambda a: (a.version, int(a))
    )
    return [f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}" for a in addresses]


def _lookup_dns(host: str, port: int, getaddrinfo: AddressInfo) -> list[str]:
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in _NO_SUCH_NAME:
            return []
        raise
    return _endpoints([sockaddr[0] for *_, sockaddr in infos], port)


def _ask_dns_server(host: str, port: int, server: tuple[str, int]) -> list[str]:
    """The A and AAAA records of `host` at `server`, as endpoints with `port` (`_endpoints`):
    NXDOMAIN or no record is an empty list; a timeout, SERVFAIL or a refusal raises
    (dns.exception.DNSException)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server[0]]
    resolver.port = server[1]
    resolver.lifetime = DNS_TIMEOUT_S
    name = dns.name.from_text(host)  # absolute: no search domains
    ips: list[str] = []
    for record_type in ("A", "AAAA"):
        try:
            answer = resolver.resolve(name, record_type, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        ips += [record.to_text() for record in answer.rrset or ()]
    return _endpoints(ips, port)


def _lookup(target: _Target, job_lookup: JobLookup | None, getaddrinfo: AddressInfo) -> list[str]:
    if target.kind == "static":
        return list(target.static)
    if target.kind == "dns" and target.dns_server is not None:
        return _ask_dns_server(target.host, target.port, target.dns_server)
    if target.kind == "dns":
        return _lookup_dns(target.host, target.port, getaddrinfo)
    if job_lookup is None:
        raise ValueError(f"job:{target.job}: job addresses resolve only inside a streamlet cluster")
    return [_check_host_port(endpoint) for endpoint in job_lookup(target.job)]


def resolve(
    address: str,
    job_lookup: JobLookup | None = None,
    getaddrinfo: AddressInfo = socket.getaddrinfo,
) -> list[str]:
    """The `host:port` endpoints `address` names now (one blocking lookup; empty if none runs)."""
    return _lookup(_parse(address), job_lookup, getaddrinfo)


class EndpointResolver:
    """The current endpoints of one address, refreshed in the background (module docstring).

    Counters for tests and metrics: `refreshes` (lookups done, failed or not), `failures`,
    `changes` (times the list changed) and `last_refresh` (`time.monotonic()` of the latest).
    """

    def __init__(
        self,
        address: str,
        *,
        job_lookup: JobLookup | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        getaddrinfo: AddressInfo = socket.getaddrinfo,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"the resolve interval must be above 0 s, got {interval_s}")
        self.address = address.strip()
        self.interval_s = interval_s
        self._target = _parse(address)
        if self._target.kind == "static" and not self._target.static:
            raise ValueError(f"compaction service address {address!r} names no host:port")
        if self._target.kind == "job" and job_lookup is None:
            raise ValueError(
                f"{self.address}: job addresses resolve only inside a streamlet program that "
                "knows its cluster (a task manager, or cluster.jobmanager for streamlet run)"
            )
        self._job_lookup = job_lookup
        self._getaddrinfo = getaddrinfo
        self._lock = threading.Lock()
        self._endpoints: tuple[str, ...] = self._target.static
        self._users = 1  # guarded by _shared_lock
        self._shared_key: tuple[Any, ...] | None = None  # set by shared_resolver
        self.refreshes = 0
        self.failures = 0
        self.changes = 0
        self.last_refresh = time.monotonic()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._failing = False
        self._thread: threading.Thread | None = None
        if self._target.kind != "static":
            self._thread = threading.Thread(
                target=self._run, name=f"compaction-resolver {self.address}", daemon=True
            )
            self._thread.start()

    def endpoints(self) -> tuple[str, ...]:
        """The endpoints as of the latest refresh (never waits)."""
        with self._lock:
            return self._endpoints

    @property
    def dynamic(self) -> bool:
        """Whether the list can change (a `dns:` or `job:` address)."""
        return self._thread is not None

    def join(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for the refreshes to stop after the last `release`; whether
        they did (always for a static list)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def refresh_soon(self) -> None:
        """Refresh without waiting for the interval (a client saw a failure or no endpoint)."""
        self._wake.set()

    def release(self) -> None:
        """One user fewer (the maker counts as one); the last one stops the refreshes."""
        with _shared_lock:
            self._users -= 1
            if self._users > 0:
                return
            if self._shared_key is not None and _shared.get(self._shared_key) is self:
                del _shared[self._shared_key]
        self._closed.set()
        self._wake.set()

    # -- the refresh thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            started = time.monotonic()
            self._refresh()
            self._wake.wait(self.interval_s)
            self._wake.clear()
            gap = MIN_REFRESH_GAP_S - (time.monotonic() - started)
            if gap > 0:
                self._closed.wait(gap)

    def _refresh(self) -> None:
        try:
            found = tuple(_lookup(self._target, self._job_lookup, self._getaddrinfo))
        except Exception as e:  # noqa: BLE001 - any lookup failure keeps the last list
            with self._lock:
                self.refreshes += 1
                self.failures += 1
                self.last_refresh = time.monotonic()
                first = not self._failing
                self._failing = True
            if first:
                log.warning(
                    "cannot resolve compaction service address %s (keeping %s): %s",
                    self.address,
                    list(self._endpoints) or "no endpoint",
                    e,
                )
            return
        with self._lock:
            changed = found != self._endpoints
            self._endpoints = found
            self.refreshes += 1
            self.changes += changed
            self.last_refresh = time.monotonic()
            recovered, self._failing = self._failing, False
        if changed or recovered:
            log.info(
                "compaction service address %s resolves to %s",
                self.address,
                list(found) or "no endpoint",
            )


def shared_resolver(
    address: str,
    *,
    job_lookup: JobLookup | None = None,
    interval_s: float = DEFAULT_INTERVAL_S,
    getaddrinfo: AddressInfo = socket.getaddrinfo,
) -> EndpointResolver:
    """This process's resolver of `address` (made on first use), with one more user: call
    `release()` when done with it."""
    key = (address.strip(), job_lookup, interval_s, getaddrinfo)
    with _shared_lock:
        resolver = _shared.get(key)
        if resolver is not None:
            resolver._users += 1
            return resolver
        resolver = EndpointResolver(
            address, job_lookup=job_lookup, interval_s=interval_s, getaddrinfo=getaddrinfo
        )
        resolver._shared_key = key
        _shared[key] = resolver
        return resolver
