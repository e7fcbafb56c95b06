"""The job manager's REST client (aiohttp), used by the CLI and by task managers.

Every call carries the token; an error answer becomes a `ClusterError` with the server's message
and HTTP status, an unreachable job manager one with status None. A savepoint or stop answers once
the savepoint completed: those calls wait up to `SAVEPOINT_TIMEOUT_S`.
"""

import base64
from types import TracebackType
from typing import Any

import aiohttp

from streamlet.cluster.auth import bearer
from streamlet.cluster.model import Artifact

SAVEPOINT_TIMEOUT_S = 600.0


class ClusterError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobManagerClient:
    """`async with JobManagerClient(url, token) as client: await client.jobs()`."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._session = aiohttp.ClientSession(
            headers=bearer(token), timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def __aenter__(self) -> "JobManagerClient":
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bool = False,
        timeout_s: float | None = None,
    ) -> Any:
        timeout = None if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._session.request(
                method, self.url + path, json=body, timeout=timeout
            ) as response:
                if response.status >= 400:
                    try:
                        message = (await response.json())["error"]
                    except (aiohttp.ContentTypeError, ValueError, KeyError, TypeError):
                        message = (await response.text()) or response.reason
                    raise ClusterError(f"{message} (HTTP {response.status})", response.status)
                return await response.read() if raw else await response.json()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the job manager at {self.url}: {e}") from e

    async def submit(
        self,
        artifact: Artifact,
        data: bytes | None,
        parallelism: int | None,
        config: dict[str, Any],
        restore_from: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "artifact": vars(artifact),
            "data_b64": None if data is None else base64.b64encode(data).decode(),
            "parallelism": parallelism,
            "config": config,
            "restore_from": restore_from,
        }
        return await self._call("POST", "/api/v1/jobs", body)

    async def jobs(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/api/v1/jobs"))["jobs"]

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/v1/jobs/{job_id}")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/api/v1/jobs/{job_id}/cancel")

    async def checkpoints(self, job_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/v1/jobs/{job_id}/checkpoints")

    async def savepoint(self, job_id: str, url: str | None, format: str) -> dict[str, Any]:
        """Take a savepoint of the running job; its record (`path`, ...) once it completed."""
        body = {"url": url, "format": format} if url else {"format": format}
        return await self._call(
            "POST", f"/api/v1/jobs/{job_id}/savepoints", body, timeout_s=SAVEPOINT_TIMEOUT_S
        )

    async def stop(self, job_id: str, url: str | None, format: str) -> dict[str, Any]:
        """Stop the job with a savepoint; the savepoint's record once it completed."""
        body = {"savepoint_url": url, "format": format} if url else {"format": format}
        return await self._call(
            "POST", f"/api/v1/jobs/{job_id}/stop", body, timeout_s=SAVEPOINT_TIMEOUT_S
        )

    async def savepoints(self, job_id: str) -> list[dict[str, Any]]:
        return (await self._call("GET", f"/api/v1/jobs/{job_id}/savepoints"))["savepoints"]

    async def task_managers(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/api/v1/taskmanagers"))["task_managers"]

    async def file(self, job_id: str, name: str) -> bytes:
        return await self._call("GET", f"/api/v1/jobs/{job_id}/files/{name}", raw=True)

    async def register(self, registration: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/api/v1/taskmanagers", registration)

    async def heartbeat(
        self, tm_id: str, reports: list[dict], draining: bool = False
    ) -> dict[str, Any] | None:
        """The answer, or None if the job manager does not know this task manager."""
        body = {"deployments": reports, "draining": draining}
        try:
            return await self._call("POST", f"/api/v1/taskmanagers/{tm_id}/heartbeat", body)
        except ClusterError as e:
            if e.status == 404:
                return None
            raise

    async def deregister(self, tm_id: str, timeout_s: float) -> None:
        """Tell the job manager this task manager leaves (its jobs fail over at once)."""
        await self._call("DELETE", f"/api/v1/taskmanagers/{tm_id}", timeout_s=timeout_s)
