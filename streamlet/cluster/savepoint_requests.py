"""The job manager's savepoint requests: `streamlet savepoint` and `streamlet stop` (their REST
calls) wait here until the job's leading deployment took the savepoint.

A request (an id, the job, the savepoint's directory or None for the job's default one named after
the request's id, the format, whether it stops the job) goes to the task manager that runs slot 0
of the job's current attempt with every heartbeat answer until that deployment reports the outcome
(the task manager ignores a request it already has). The outcome settles the request: the
savepoint's record (path, format, time, whether it stopped the job), or the error that made it
fail. When the attempt ends before it reported (a task manager lost), the savepoint's directory
tells: a request whose `_metadata` is there completed. Requests live in the job manager's memory:
one that restarts forgets them (their REST calls broke with it).
"""

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from streamlet.checkpoint import CheckpointStorage, read_metadata
from streamlet.cluster.model import JobRecord
from streamlet.config import Configuration
from streamlet.errors import CheckpointError


class SavepointFailed(Exception):
    """A savepoint was not taken; the message says why."""


@dataclass
class SavepointRequest:
    id: str
    job_id: str
    url: str | None
    format: str
    stop: bool
    result: "asyncio.Future[dict[str, Any]]"

    def message(self, deployment_id: str) -> dict[str, Any]:
        """What the leading task manager gets in its heartbeat answers."""
        return {
            "request_id": self.id,
            "deployment_id": deployment_id,
            "url": self.url,
            "format": self.format,
            "stop": self.stop,
        }


class SavepointRequests:
    def __init__(self) -> None:
        self._pending: dict[str, SavepointRequest] = {}

    def add(self, job_id: str, url: str | None, format: str, stop: bool) -> SavepointRequest:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # retrieved here too: the REST call that waits for it may have gone (a client timeout)
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        request = SavepointRequest(uuid.uuid4().hex[:12], job_id, url, format, stop, future)
        self._pending[request.id] = request
        return request

    def of(self, job_id: str) -> list[SavepointRequest]:
        return [request for request in self._pending.values() if request.job_id == job_id]

    def stopping(self, job_id: str) -> bool:
        return any(request.stop for request in self.of(job_id))

    def report(self, job: JobRecord, outcomes: Any) -> None:
        """Settle the job's requests whose outcome a deployment reported (`{request id: {"path"}
        or {"error"}}`), adding each savepoint taken to the job's record."""
        if not isinstance(outcomes, dict):
            return
        for request_id, outcome in outcomes.items():
            request = self._pending.get(request_id)
            if request is None or request.job_id != job.id or not isinstance(outcome, dict):
                continue
            if isinstance(outcome.get("path"), str):
                self._succeeded(job, request, outcome["path"])
            else:
                self._failed(request, str(outcome.get("error") or "unknown error"))

    async def settle(self, job: JobRecord, reason: str) -> bool:
        """Settle every request of the job, whose attempt ended: from the savepoint's directory if
        it completed, else failed with `reason`. True if one that stops the job completed."""
        stopped = False
        for request in self.of(job.id):
            path = await asyncio.to_thread(_completed, job, request)
            if path is None:
                self._failed(request, reason)
            else:
                self._succeeded(job, request, path)
                stopped = stopped or request.stop
        return stopped

    def _succeeded(self, job: JobRecord, request: SavepointRequest, path: str) -> None:
        record = {
            "path": path,
            "format": request.format,
            "timestamp_ms": time.time_ns() // 1_000_000,
            "stop": request.stop,
        }
        job.savepoints.insert(0, record)
        del self._pending[request.id]
        if not request.result.done():
            request.result.set_result(record)

    def _failed(self, request: SavepointRequest, error: str) -> None:
        del self._pending[request.id]
        if not request.result.done():
            request.result.set_exception(SavepointFailed(error))


def _completed(job: JobRecord, request: SavepointRequest) -> str | None:
    """The directory of the request's savepoint if it completed (its metadata is there)."""
    config = Configuration(job.config)
    options = config.get("dfs.storage-options")
    if request.url is not None:
        candidates = [request.url]
    else:
        storage = CheckpointStorage(config.get("checkpoint.dir"), job.name, options)
        candidates = storage.savepoints_named(request.id)
    for url in candidates:
        try:
            read_metadata(url, options)
        except CheckpointError:
            continue
        return url.rstrip("/")
    return None
