"""The runtime's answers to `job:<name>` compaction service addresses.

`job:<name>` names the endpoints the running jobs named <name> registered with the job manager
(several compactor jobs, or one with parallelism > 1, serve one address). Resolving addresses
(also `dns:///name:port` and `host:port` lists), continuously, is the compaction service
client's (`compaction_service.resolver`); it does not import the runtime, so the runtime hands it
a lookup (`streamlet.compaction`): inside a task manager `current_lookup()`, the task manager's
copy of the job manager's endpoint directory (refreshed by every heartbeat, so looking up never
calls out), elsewhere a `JobManagerLookup` (the job manager's REST API, blocking: the resolver
calls it from its own thread). `resolve_compaction_endpoints` resolves an address once, with
such a lookup (for scripts and tests).
"""

import json
import urllib.request
from contextvars import ContextVar
from typing import Protocol

from compaction_service.resolver import resolve
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


def resolve_compaction_endpoints(address: str, lookup: EndpointLookup | None) -> list[str]:
    """`host:port` endpoints for `compaction.service.address` now (empty if none is running)."""
    return resolve(address, None if lookup is None else lookup.job_endpoints)
