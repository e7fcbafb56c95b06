"""Compaction service addresses: `compaction.service.address` to a list of `host:port`.

Three forms: `job:<name>` (the endpoints the running jobs named <name> registered with the job
manager: several compactor jobs, or one with parallelism > 1, serve one address), `dns:///name:port`
(every address the name resolves to, as behind a Kubernetes headless Service) and a comma-separated
list of `host:port`. `resolve_compaction_endpoints` is the one function the state backend's
compactor factory calls; inside a task manager, `current_lookup()` gives the task manager's copy
of the job manager's endpoint directory (refreshed by every heartbeat), so resolving never calls
out from the event loop.
"""

import json
import socket
import urllib.request
from contextvars import ContextVar
from typing import Protocol

from streamlet.cluster.auth import bearer


class EndpointLookup(Protocol):
    def job_endpoints(self, name: str) -> list[str]:
        """The `host:port` endpoints of the running jobs named `name`."""
        ...


class EndpointDirectory:
    """A task manager's copy of the job manager's directory (job name -> endpoints)."""

    def __init__(self) -> None:
        self._by_name: dict[str, list[str]] = {}

    def update(self, by_name: dict[str, list[str]]) -> None:
        self._by_name = {name: list(endpoints) for name, endpoints in by_name.items()}

    def job_endpoints(self, name: str) -> list[str]:
        return list(self._by_name.get(name, []))


class JobManagerLookup:
    """Asks the job manager's REST API (blocking: for threads and scripts, not event loops)."""

    def __init__(self, url: str, token: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def job_endpoints(self, name: str) -> list[str]:
        request = urllib.request.Request(
            f"{self.url}/api/v1/endpoints/{name}", headers=bearer(self.token)
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return list(json.load(response)["endpoints"])


lookup_context: ContextVar[EndpointLookup | None] = ContextVar(
    "streamlet_endpoint_lookup", default=None
)
"""Set by a task manager around the jobs it runs."""


def current_lookup() -> EndpointLookup | None:
    return lookup_context.get()


def _check_host_port(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {address!r}")
    return address


def resolve_compaction_endpoints(
    address: str, jobmanager_client: EndpointLookup | None
) -> list[str]:
    """`host:port` endpoints for `compaction.service.address` (empty if none is running)."""
    address = address.strip()
    if not address:
        return []
    if address.startswith("job:"):
        name = address[len("job:") :]
        if not name:
            raise ValueError("job: addresses need a job name, e.g. job:compaction-service")
        if jobmanager_client is None:
            raise ValueError(f"{address}: job addresses resolve only inside a streamlet cluster")
        return jobmanager_client.job_endpoints(name)
    if address.startswith("dns:///"):
        host, _, port = _check_host_port(address[len("dns:///") :]).rpartition(":")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        resolved = []
        for family, *_, sockaddr in infos:
            ip = sockaddr[0]
            endpoint = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
            if endpoint not in resolved:
                resolved.append(endpoint)
        return resolved
    return [_check_host_port(part.strip()) for part in address.split(",") if part.strip()]
