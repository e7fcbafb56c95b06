"""`streamlet taskmanager`: registers with the job manager, reports every heartbeat interval, and
runs the deployments the answers name in its slots.

The heartbeat loop is the only conversation with the job manager: a report of every deployment
(status, metrics, endpoints, savepoint outcomes) goes up; deployments to start, to cancel, to
abort and to forget, savepoints to take, and the endpoint directory come back. An unknown task
manager (the job manager restarted) registers again with the deployments it still runs, which the
job manager adopts. While the job manager is unreachable the task manager keeps running its jobs
and keeps trying.

It also serves `GET /metrics` (Prometheus, token required) and `GET /healthz` (no token: for
liveness and readiness probes) on `port` (0: a free one), and the data exchange with other task
managers (`exchange`) on a free port of `cluster.bind-host`.
It logs `task manager <id> registered` once registered (test and scripts wait for it). It
registers with its labels (`taskmanager.labels` and `--label`), which jobs select with
`placement.taskmanager-label`.

Draining (`drain()`, on SIGTERM, see `commands.taskmanager`): the task manager says so in its
heartbeats at once (the job manager places nothing more on it, and it starts nothing more),
withdraws the endpoints of every deployment (the job manager's directory, and so every `job:`
address, drops them with that heartbeat) and runs its jobs' drain handlers
(`RuntimeContext.on_drain`: the compaction service stops taking work and finishes the calls it
runs) for at most `taskmanager.drain-grace`. Then `run` ends: the deployments are aborted, and
the task manager deregisters, so that the job manager fails its other jobs over at once instead
of after the heartbeat timeout.
"""

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import uuid
from pathlib import Path

from aiohttp import web

from streamlet.cluster.auth import token_middleware
from streamlet.cluster.client import ClusterError, JobManagerClient
from streamlet.cluster.deployment import Deployment
from streamlet.cluster.endpoints import EndpointDirectory
from streamlet.cluster.exchange import ExchangeServer
from streamlet.cluster.metrics import TaskManagerMetrics
from streamlet.config import Configuration

log = logging.getLogger("streamlet.cluster.taskmanager")
DRAIN_MARGIN_S = 5.0  # beyond the drain grace, for drain handlers that overrun it
STOP_TIMEOUT_S = 10.0  # for aborted deployments to end, and to deregister
HEARTBEAT_STOP_S = 5.0  # beyond a heartbeat interval, for the heartbeat thread to end


def drain_exit_bound_s(config: Configuration) -> float:
    """The longest a task manager takes to exit after SIGTERM: the drain, its overrun margin,
    the deployments' end, the heartbeat thread's, and the deregistration (a Kubernetes pod's
    terminationGracePeriodSeconds must be above it)."""
    grace_s = config.get("taskmanager.drain-grace") / 1000
    interval_s = config.get("cluster.heartbeat.interval") / 1000
    return grace_s + DRAIN_MARGIN_S + 2 * STOP_TIMEOUT_S + interval_s + HEARTBEAT_STOP_S


def labels_of(config: Configuration, extra: list[str] | None = None) -> list[str]:
    """A task manager's labels: `taskmanager.labels` (comma-separated) and `extra` (`--label`)."""
    given = [*config.get("taskmanager.labels").split(","), *(extra or [])]
    labels = list(dict.fromkeys(label.strip() for label in given if label.strip()))
    for label in labels:
        if "," in label:
            raise ValueError(f"a task manager label holds no ',': {label!r}")
    return labels


class TaskManager:
    def __init__(
        self,
        config: Configuration,
        slots: int | None = None,
        port: int = 0,
        labels: list[str] | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self.labels = labels_of(config, labels)
        self.drain_grace_s = config.get("taskmanager.drain-grace") / 1000
        self.draining = False
        self.slots = slots or config.get("taskmanager.slots")
        self.host = config.get("cluster.bind-host")
        self.token = config.get("cluster.token")
        self.interval_s = config.get("cluster.heartbeat.interval") / 1000
        self.deployments: dict[str, Deployment] = {}
        self.directory = EndpointDirectory()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"streamlet-tm-{self.id}-"))
        self.metrics = TaskManagerMetrics(self)
        self.metrics_url: str | None = None
        self.port = port
        self.exchange = ExchangeServer(self.host, self.token)
        self._heartbeat_loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat_wake: asyncio.Event | None = None

    async def run(self) -> None:
        """Serve metrics and heartbeat until cancelled.

        Heartbeats run on their own thread and event loop: a job's operators share this loop, and
        a blocking state call (an LSM write stall, say) must not make the job manager declare a
        working task manager lost. The answers are applied on this loop.
        """
        runner = await self._serve_metrics()
        await self.exchange.start()
        self._client = JobManagerClient(self.config.get("cluster.jobmanager"), self.token)
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        stopped = threading.Event()
        heartbeats = threading.Thread(
            target=self._heartbeat_thread,
            args=(loop, ended, stopped),
            name=f"heartbeat-{self.id}",
            daemon=True,
        )
        heartbeats.start()
        try:
            await ended
        finally:
            stopped.set()
            self._wake_heartbeat()
            deployments = list(self.deployments.values())
            for deployment in deployments:
                deployment.abort()
            await asyncio.gather(*(d.ended(STOP_TIMEOUT_S) for d in deployments))
            await asyncio.to_thread(heartbeats.join, self.interval_s + HEARTBEAT_STOP_S)
            if self.draining:
                await self._deregister()
            await self._client.close()
            await self.exchange.stop()
            await runner.cleanup()
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def drain(self) -> None:
        """Take no new work, withdraw every endpoint at once, and give the jobs' drain handlers
        `taskmanager.drain-grace` to finish what they run (see the module's docstring)."""
        self.draining = True
        deployments = list(self.deployments.values())
        for deployment in deployments:
            deployment.withdraw()
        self._wake_heartbeat()  # the job manager hears of it now, not at the next interval
        log.info(
            "task manager %s draining: %d deployment(s), grace %.1f s",
            self.id,
            len(deployments),
            self.drain_grace_s,
        )
        drains = asyncio.gather(*(d.drain(self.drain_grace_s) for d in deployments))
        try:
            await asyncio.wait_for(drains, self.drain_grace_s + DRAIN_MARGIN_S)
        except TimeoutError:
            log.warning("task manager %s: the drain overran its grace; stopping", self.id)
        log.info("task manager %s drained", self.id)

    async def _deregister(self) -> None:
        try:
            await self._client.deregister(self.id, STOP_TIMEOUT_S)
            log.info("task manager %s deregistered", self.id)
        except ClusterError as e:
            log.warning("task manager %s could not deregister: %s", self.id, e)

    def _wake_heartbeat(self) -> None:
        """Send the next heartbeat now."""
        loop, wake = self._heartbeat_loop, self._heartbeat_wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the heartbeat loop has ended
                loop.call_soon_threadsafe(wake.set)

    def _heartbeat_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        ended: "asyncio.Future[None]",
        stopped: threading.Event,
    ) -> None:
        def finish(error: BaseException | None) -> None:
            if ended.done():
                return
            if error is None:
                ended.set_result(None)
            else:
                ended.set_exception(error)

        error: BaseException | None = None
        try:
            asyncio.run(self._heartbeat_forever(loop, stopped))
        except BaseException as e:  # noqa: BLE001 - handed to the task manager's loop
            error = e
        try:
            loop.call_soon_threadsafe(finish, error)
        except RuntimeError:
            pass  # the task manager's loop is gone: it is shutting down anyway

    async def _serve_metrics(self) -> web.AppRunner:
        app = web.Application(middlewares=[token_middleware(self.token)])

        async def metrics(request: web.Request) -> web.Response:
            body, content_type = self.metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.metrics_url = f"http://{self.host}:{port}/metrics"
        return runner

    async def _heartbeat_forever(
        self, loop: asyncio.AbstractEventLoop, stopped: threading.Event
    ) -> None:
        self._heartbeat_wake = asyncio.Event()
        self._heartbeat_loop = asyncio.get_running_loop()
        async with JobManagerClient(self.config.get("cluster.jobmanager"), self.token) as client:
            await self._converse(client, loop, stopped, self._heartbeat_wake)

    async def _converse(
        self,
        client: JobManagerClient,
        loop: asyncio.AbstractEventLoop,
        stopped: threading.Event,
        wake: asyncio.Event,
    ) -> None:
        registered = False
        unreachable = False
        while not stopped.is_set():
            reports = [deployment.report() for deployment in list(self.deployments.values())]
            try:
                if registered:
                    answer = await client.heartbeat(self.id, reports, self.draining)
                else:
                    answer = await client.register(
                        {
                            "id": self.id,
                            "host": self.host,
                            "slots": self.slots,
                            "metrics_url": self.metrics_url,
                            "exchange_address": self.exchange.address,
                            "labels": self.labels,
                            "draining": self.draining,
                            "deployments": reports,
                        }
                    )
                    log.info(
                        "task manager %s registered with %s (%d slots%s)",
                        self.id,
                        client.url,
                        self.slots,
                        f", labels {','.join(self.labels)}" if self.labels else "",
                    )
                    registered = True
                unreachable = False
            except ClusterError as e:
                if not unreachable:
                    log.warning("job manager unreachable, retrying: %s", e)
                unreachable = True
                answer = None
            if answer is not None:
                loop.call_soon_threadsafe(self._apply, answer)
            elif not unreachable:  # the job manager restarted and does not know us
                log.info("the job manager does not know task manager %s: registering", self.id)
                registered = False
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval_s)
            wake.clear()

    def _apply(self, answer: dict) -> None:
        for descriptor in [] if self.draining else answer.get("deploy", []):
            if descriptor["deployment_id"] not in self.deployments:
                deployment = Deployment(
                    descriptor,
                    self._client,
                    self.workdir / descriptor["deployment_id"],
                    self.directory,
                    self.exchange,
                )
                self.deployments[deployment.id] = deployment
                log.info("starting deployment %s of job %s", deployment.id, deployment.name)
                deployment.start()
        for request in answer.get("savepoints", []):  # before a cancel of the same answer
            deployment = self.deployments.get(request["deployment_id"])
            if deployment is not None:
                deployment.request_savepoint(request)
        for deployment_id in answer.get("cancel", []):
            if deployment_id in self.deployments:
                self.deployments[deployment_id].cancel()
        for deployment_id in answer.get("abort", []):
            if deployment_id in self.deployments:
                self.deployments[deployment_id].abort()
        for deployment_id in answer.get("release", []):
            deployment = self.deployments.get(deployment_id)
            if deployment is not None and deployment.status.terminal:
                del self.deployments[deployment_id]
        self.directory.update(answer.get("endpoints", {}))
