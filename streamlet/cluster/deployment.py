"""One deployment in a task manager: a job's attempt, run with the single-process executor.

The deployment fetches the job's file from the job manager (if it has one), loads the job, and
runs it with the job's configuration (whose `cluster.bind-host`, unless the job sets one, is the
task manager's), restoring the job's latest checkpoint (a redeployment after a failover continues
exactly there): with `execute_job` when it has all the job's slots, as a
`DistributedExecution` over its slots when the job spans several task managers. Around the run
it sets the context the job's code sees: where `RuntimeContext.register_endpoint` reports to,
where `RuntimeContext.on_drain` handlers go, and the endpoint directory `job:<name>` compaction
addresses resolve against.

A job submitted from a savepoint or checkpoint (`restore_from`) restores it while the job has no
checkpoint of its own; once it has one (a later attempt), it restores its latest checkpoint.

`cancel()` stops the job after a final checkpoint (the user cancelled it); `abort()` stops it at
once, without a checkpoint (the job manager gave the job to another deployment: this one must not
write anything more). `request_savepoint()` carries out a savepoint request of the job manager
(this deployment leads the job: it runs slot 0) through the job's `JobControl`; its outcome (the
savepoint's directory or the error) goes up with every report. A request that stops the job ends
it as a cancellation does (CANCELED), with the savepoint as its final checkpoint.

A task manager's drain (SIGTERM) has two parts here: `withdraw()` stops advertising the endpoints
the job registered (the next report lists none, also of endpoints registered later), and
`drain(grace_s)` runs the job's drain handlers, which stop taking work and finish what they run
within the grace; the task manager aborts the deployment afterwards.
"""

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from streamlet.checkpoint import CheckpointStorage
from streamlet.cluster import artifacts
from streamlet.cluster.client import JobManagerClient
from streamlet.cluster.distributed import DistributedExecution
from streamlet.cluster.endpoints import EndpointDirectory, lookup_context
from streamlet.cluster.exchange import ExchangeServer
from streamlet.cluster.model import Artifact, DeploymentStatus
from streamlet.config import Configuration
from streamlet.errors import SavepointError
from streamlet.executor import execute_job
from streamlet.functions import DrainHandler, drain_registry, endpoint_registry
from streamlet.metrics import JobMetrics
from streamlet.savepoints import JobControl

log = logging.getLogger("streamlet.cluster.deployment")


class Deployment:
    def __init__(
        self,
        descriptor: dict[str, Any],
        client: JobManagerClient,
        workdir: Path,
        directory: EndpointDirectory,
        exchange: ExchangeServer,
    ) -> None:
        self.id: str = descriptor["deployment_id"]
        self.job_id: str = descriptor["job_id"]
        self.name: str = descriptor["name"]
        self.parallelism: int = descriptor["parallelism"]
        self.slots: list[int] = descriptor["slots"]
        self.slot_addresses: list[str] = descriptor["slot_addresses"]
        self.config: dict[str, Any] = descriptor["config"]
        self.artifact = Artifact(**descriptor["artifact"])
        self.restore_from: str | None = descriptor.get("restore_from")
        self.client = client
        self.workdir = workdir
        self.directory = directory
        self.exchange = exchange
        self.status = DeploymentStatus.STARTING
        self.error: str | None = None
        self.endpoints: list[str] = []
        self.drain_handlers: list[DrainHandler] = []
        self._draining = False
        self.metrics = JobMetrics()
        self.control = JobControl()
        self.savepoints: dict[str, dict[str, str] | None] = {}  # request id -> outcome
        self._cancelled = False
        self._task: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deployment {self.id}")

    def cancel(self) -> None:
        self._cancelled = True
        self.control.stop.set()

    def request_savepoint(self, request: dict[str, Any]) -> None:
        """Take the savepoint the job manager asks for (once per request id)."""
        request_id = request["request_id"]
        if request_id in self.savepoints:
            return
        self.savepoints[request_id] = None
        task = asyncio.create_task(self._savepoint(request), name=f"savepoint {request_id}")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _savepoint(self, request: dict[str, Any]) -> None:
        request_id, url, format = request["request_id"], request["url"], request["format"]
        try:
            if request["stop"]:
                path = await self.control.stop_with_savepoint(url, format, name=request_id)
            else:
                path = await self.control.savepoint(url, format, name=request_id)
        except SavepointError as e:
            self.savepoints[request_id] = {"error": str(e)}
            return
        self.savepoints[request_id] = {"path": path}

    def abort(self) -> None:
        if self._task is not None and not self._task.done():
            log.warning("aborting deployment %s (%s)", self.id, self.name)
            self._task.cancel()

    def withdraw(self) -> None:
        """Stop advertising the job's endpoints (the next report lists none)."""
        self._draining = True
        self.endpoints.clear()

    async def drain(self, grace_s: float) -> None:
        """Run the job's drain handlers (each finishes within `grace_s`)."""
        if self.status.terminal or not self.drain_handlers:
            return
        log.info(
            "draining deployment %s (%s): %d handler(s), grace %.1f s",
            self.id,
            self.name,
            len(self.drain_handlers),
            grace_s,
        )
        outcomes = await asyncio.gather(
            *(handler(grace_s) for handler in self.drain_handlers), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.warning("a drain handler of deployment %s failed: %r", self.id, outcome)

    async def ended(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until the deployment's run has ended."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=timeout_s)

    def _register_endpoint(self, address: str) -> None:
        if not self._draining:  # a draining task manager advertises nothing new
            self.endpoints.append(address)

    async def _run(self) -> None:
        try:
            data = None
            if self.artifact.file_name is not None:
                data = await self.client.file(self.job_id, self.artifact.file_name)
            endpoint_registry.set(self._register_endpoint)
            drain_registry.set(self.drain_handlers.append)
            lookup_context.set(self.directory)  # also seen by module-level code (to_thread)
            job = await asyncio.to_thread(artifacts.load, self.artifact, data, self.workdir)
            # what the job binds (the compaction service job's server): this task manager's
            # interface, unless the job was submitted with its own cluster.bind-host
            config = Configuration({"cluster.bind-host": self.exchange.host, **self.config})
            restore_from = await asyncio.to_thread(self._restore_from, job.name, config)
            self.status = DeploymentStatus.RUNNING
            log.info("deployment %s of job %s (%s) running", self.id, self.job_id, self.name)
            if len(self.slots) == self.parallelism:
                await execute_job(
                    job,
                    config,
                    parallelism=self.parallelism,
                    metrics=self.metrics,
                    restore_from=restore_from,
                    control=self.control,
                )
            else:
                await DistributedExecution(
                    job,
                    config,
                    self.parallelism,
                    self.metrics,
                    self.control,
                    execution_id=self.id,
                    slot_addresses=self.slot_addresses,
                    local_slots=set(self.slots),
                    exchange=self.exchange,
                    token=self.exchange.token,
                    restore_from=restore_from,
                ).run()
            stopped = self._cancelled or self.control.final_savepoint is not None
            self.status = DeploymentStatus.CANCELED if stopped else DeploymentStatus.FINISHED
        except asyncio.CancelledError:
            self.status = DeploymentStatus.CANCELED
        except Exception as e:
            log.exception("deployment %s of job %s failed", self.id, self.job_id)
            self.status = DeploymentStatus.FAILED
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.control.end()
            self.endpoints.clear()
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        log.info("deployment %s of job %s (%s) %s", self.id, self.job_id, self.name, self.status)

    def _restore_from(self, job_name: str, config: Configuration) -> str | None:
        """What the job was submitted from, while it has no complete checkpoint of its own."""
        if self.restore_from is None:
            return None
        storage = CheckpointStorage(
            config.get("checkpoint.dir"), job_name, config.get("dfs.storage-options")
        )
        return self.restore_from if storage.latest() is None else None

    def metrics_snapshot(self) -> dict[str, Any]:
        local, remote = self.metrics.compactions()
        cpu_local, cpu_remote = self.metrics.compaction_cpu_seconds()
        return {
            "compaction_cpu_seconds_local": round(cpu_local, 3),
            "compaction_cpu_seconds_remote": round(cpu_remote, 3),
            "records_in": self.metrics.records_in,
            "records_out": self.metrics.records_out,
            "checkpoints": self.metrics.checkpoints,
            "last_checkpoint_id": self.metrics.last_checkpoint_id,
            "compactions_local": local,
            "compactions_remote": remote,
        }

    def report(self) -> dict[str, Any]:
        return {
            "deployment_id": self.id,
            "job_id": self.job_id,
            "status": str(self.status),
            "error": self.error,
            "metrics": self.metrics_snapshot(),
            "endpoints": list(self.endpoints),
            "savepoints": {key: value for key, value in self.savepoints.items() if value},
        }
