"""The job manager's registry: jobs, task managers, scheduling, failover and recovery.

Everything here runs on the job manager's event loop; blocking work (the DFS, loading a submitted
module to validate it) goes through `asyncio.to_thread`. Every change of a job record is saved to
the HA store before the REST call or heartbeat that caused it is answered.

- Submit: the module is loaded (a broken one is rejected with its error), the configuration is
  validated, the job's checkpoint and state directories default to `<cluster.dir>/jobs/<id>/`.
  The job manager's `cluster.bind-host` is not among its defaults: a job binds the interface of
  the task manager that runs it (`Deployment`), unless submitted with its own.
  A job submitted from a savepoint or checkpoint (`restore_from`) is checked against it as a run
  would be (the path, its metadata, the operators and their state, the parallelism): bad input is
  rejected before anything is written.
- Savepoints: `savepoint(job, url, format, stop)` waits for a request the job's leading task
  manager carries out (`savepoint_requests`); a stop with a savepoint leaves the job RUNNING until
  its deployments end (CANCELED), and one that fails leaves it running.
- Scheduling: a waiting job is deployed to the slots `scheduler.place` picks among the task
  managers that sent a heartbeat lately, are not draining and carry the job's label (if it asks
  for one); they learn it from their next heartbeat's answers. A per-task-manager job
  (`instances`) gets an instance on every such task manager that has none, before waiting jobs
  take the free slots.
- Heartbeats carry each deployment's status, metrics, latest checkpoint and endpoints; answers
  carry deployments to start, to cancel (after a final checkpoint: the job was cancelled), to
  abort (at once: a stale attempt, the job runs elsewhere now) and to forget.
- Failover: a task manager silent for `cluster.heartbeat.timeout` is dropped and its jobs get a new
  deployment elsewhere, which restores their latest checkpoint (or the job's `restore_from` while
  it has none). A job's metrics add up its attempts: a new attempt's counters start at zero and
  are added to the earlier ones' totals. A job whose stop savepoint completed is not restarted:
  it is CANCELED.
- Recovery: a restarted job manager reloads the jobs from the HA store; a job's task manager
  re-registers with the deployments it still runs, which are adopted; a job whose task manager
  does not come back within the heartbeat timeout is redeployed from its latest checkpoint.
- Leaving: a draining task manager (SIGTERM) says so in its heartbeats and gets no new work; when
  it deregisters, its jobs fail over at once (a per-task-manager job just loses that instance).
"""

import asyncio
import logging
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from statebackend import StateError
from streamlet.checkpoint import CheckpointStorage, read_metadata, restored_states
from streamlet.cluster import artifacts, instances, scheduler
from streamlet.cluster.ha import HaStore
from streamlet.cluster.model import (
    Artifact,
    DeploymentStatus,
    JobRecord,
    JobStatus,
    TaskManagerInfo,
    sum_metrics,
)
from streamlet.cluster.savepoint_requests import SavepointRequests
from streamlet.config import ConfigError, Configuration
from streamlet.errors import StreamletError
from streamlet.executor import plan_job, plan_operators

log = logging.getLogger("streamlet.cluster.jobmanager")
ACTIVE = (JobStatus.DEPLOYING, JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.RECOVERING)
WAITING = (JobStatus.CREATED, JobStatus.RESTARTING)
# a job's own keys, defaulted from the cluster's configuration when the submission sets none
INHERITED_KEYS = ("dfs.storage-options", "state.backend", "compaction.mode")


class SubmissionError(ValueError):
    """A submission is rejected; the message says why."""


class UnknownJob(KeyError):
    pass


class JobNotRunning(ValueError):
    """A request that needs a running job (a savepoint, a stop) for one that is not."""


class JobManager:
    def __init__(self, config: Configuration, ha: HaStore) -> None:
        self.config = config
        self.ha = ha
        self.jobs: dict[str, JobRecord] = {}
        self.task_managers: dict[str, TaskManagerInfo] = {}
        self.timeout_s = config.get("cluster.heartbeat.timeout") / 1000
        # a task manager silent for this long gets no new work (it may be dying)
        self.fresh_s = min(self.timeout_s, 3 * config.get("cluster.heartbeat.interval") / 1000)
        self.started = time.monotonic()
        self._save_lock = asyncio.Lock()
        # per job: the latest metrics and endpoints of each deployment of its current attempt
        self._deployment_metrics: dict[str, dict[str, dict[str, Any]]] = {}
        self._deployment_endpoints: dict[str, dict[str, list[str]]] = {}
        self.savepoint_requests = SavepointRequests()

    # -- lifecycle ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reload the jobs of a previous incarnation from the HA store."""
        for record in await asyncio.to_thread(self.ha.load_all):
            if not record.status.terminal and not record.per_task_manager:
                if record.placement and record.status is not JobStatus.CANCELLING:
                    record.status = JobStatus.RECOVERING
                elif record.status not in WAITING:
                    record.status = JobStatus.RESTARTING
                log.info("recovered job %s (%s): %s", record.id, record.name, record.status)
            self.jobs[record.id] = record

    async def supervise(self) -> None:
        """Forever: drop silent task managers, redeploy their jobs, place waiting jobs."""
        while True:
            await asyncio.sleep(min(self.timeout_s / 4, 0.5))
            await self.check_task_managers()

    async def check_task_managers(self) -> None:
        now = time.monotonic()
        for tm in list(self.task_managers.values()):
            if now - tm.last_heartbeat > self.timeout_s:
                log.warning(
                    "task manager %s (%s) lost: no heartbeat for %.1f s",
                    tm.id,
                    tm.host,
                    now - tm.last_heartbeat,
                )
                del self.task_managers[tm.id]
        if now - self.started > self.timeout_s:
            await self._handle_missing_task_managers()
        await self._schedule()

    async def _handle_missing_task_managers(self, only: str | None = None) -> None:
        """Fail over the jobs that ran on a task manager that is gone (or only on `only`); a
        per-task-manager job just loses the instances that ran there."""
        for job in list(self.jobs.values()):
            gone = [
                tm
                for tm in (job.instances if job.per_task_manager else job.task_managers)
                if tm not in self.task_managers and only in (None, tm)
            ]
            if not gone or job.status.terminal:
                continue
            if job.per_task_manager:
                await self._drop_instances(job, gone, "its task manager left")
            elif job.status in ACTIVE:
                await self._fail_over(job, "a task manager of the job was lost")

    # -- jobs --------------------------------------------------------------------------------

    async def submit(
        self,
        artifact: Artifact,
        data: bytes | None,
        parallelism: int | None,
        overrides: dict[str, Any],
        restore_from: str | None = None,
    ) -> JobRecord:
        job_id = uuid.uuid4().hex[:16]
        config = {key: self.config.get(key) for key in INHERITED_KEYS}
        config.update(
            {
                "checkpoint.dir": f"{self.ha.job_url(job_id)}/checkpoints",
                "state.dir": f"{self.ha.job_url(job_id)}/state",
                "cluster.dir": self.ha.url,
            }
        )
        config.update(overrides)
        try:
            parsed = Configuration(config)
        except ConfigError as e:
            raise SubmissionError(str(e)) from e
        per_task_manager = parsed.get("placement.per-taskmanager")
        if per_task_manager:
            try:
                instances.check_submission(parallelism, restore_from)
            except ValueError as e:
                raise SubmissionError(str(e)) from None
            config.setdefault("checkpoint.interval", 0)
            parallelism = 1
        parallelism = parallelism or parsed.get("parallelism.default")
        name = await asyncio.to_thread(
            self._validate, artifact, data, parallelism, parsed, restore_from
        )
        record = JobRecord(
            job_id,
            name,
            artifact,
            parallelism,
            config,
            restore_from=restore_from,
            per_task_manager=per_task_manager,
            label=parsed.get("placement.taskmanager-label"),
        )
        if data is not None:
            await asyncio.to_thread(self.ha.write_file, job_id, artifact.file_name, data)
        self.jobs[job_id] = record
        await self._save(record)
        log.info("job %s (%s) submitted with parallelism %d", job_id, name, parallelism)
        await self._schedule()
        return record

    @staticmethod
    def _validate(
        artifact: Artifact,
        data: bytes | None,
        parallelism: int,
        config: Configuration,
        restore_from: str | None,
    ) -> str:
        """The job's name, once it loads and plans, and restores `restore_from` (as a run would
        check it before it starts); `SubmissionError` says what is wrong."""
        with tempfile.TemporaryDirectory(prefix="streamlet-submit-") as workdir:
            try:
                job = artifacts.load(artifact, data, Path(workdir))
                max_parallelism = config.get("parallelism.max")
                plan = plan_job(job, parallelism, max_parallelism)
                if restore_from is not None:
                    restored_states(
                        read_metadata(restore_from, config.get("dfs.storage-options")),
                        plan_operators(plan),
                        max_parallelism,
                        config.get("state.backend"),
                        config.get("checkpoint.allow-non-restored-state"),
                    )
            except (StreamletError, StateError) as e:
                raise SubmissionError(str(e).replace(f"{workdir}/", "")) from e
        return job.name

    def job(self, job_id: str) -> JobRecord:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise UnknownJob(job_id) from None

    async def cancel(self, job_id: str) -> JobRecord:
        job = self.job(job_id)
        if job.per_task_manager:
            if not job.status.terminal:
                job.status = JobStatus.CANCELLING
                instances.refresh(job)
        elif job.status in WAITING or job.status is JobStatus.RECOVERING:
            job.status, job.placement = JobStatus.CANCELED, []
        elif not job.status.terminal:
            job.status = JobStatus.CANCELLING
        await self._save(job)
        return job

    async def file(self, job_id: str, name: str) -> bytes:
        job = self.job(job_id)
        if name != job.artifact.file_name:
            raise UnknownJob(f"{job_id}/{name}")
        return await asyncio.to_thread(self.ha.read_file, job_id, name)

    async def checkpoints(self, job_id: str) -> dict[str, Any]:
        job = self.job(job_id)
        config = Configuration(job.config)
        storage = CheckpointStorage(
            config.get("checkpoint.dir"), job.name, config.get("dfs.storage-options")
        )
        ids = await asyncio.to_thread(storage.checkpoint_ids)
        latest = await asyncio.to_thread(storage.latest)
        return {
            "job_id": job.id,
            "directory": storage.root,
            "checkpoint_ids": ids,
            "latest": None
            if latest is None
            else {"checkpoint_id": latest["checkpoint_id"], "timestamp_ms": latest["timestamp_ms"]},
        }

    async def savepoint(
        self, job_id: str, url: str | None, format: str, stop: bool
    ) -> dict[str, Any]:
        """Take a savepoint of the running job (and with `stop`, end the job with it); the
        savepoint's record once it completed. `JobNotRunning` for a job that is not running,
        `SavepointFailed` with the reason for a savepoint that failed."""
        job = self.job(job_id)
        if job.status is not JobStatus.RUNNING:
            raise JobNotRunning(
                f"job {job_id} is {job.status}: only a running job takes savepoints"
            )
        if job.per_task_manager:
            raise JobNotRunning(
                f"job {job_id} runs an instance on every task manager "
                "(placement.per-taskmanager): it takes no savepoints"
            )
        if stop and self.savepoint_requests.stopping(job_id):
            raise JobNotRunning(f"job {job_id} is already stopping with a savepoint")
        request = self.savepoint_requests.add(job_id, url, format, stop)
        log.info(
            "job %s (%s): %s %s savepoint %s",
            job.id,
            job.name,
            "stop with a" if stop else "take a",
            format,
            url or "in the default directory",
        )
        return await request.result

    def endpoints_of(self, name: str) -> list[str]:
        """Endpoints of the running jobs named `name` (several jobs may serve one name)."""
        return [
            endpoint
            for job in self.jobs.values()
            if job.name == name and job.status is JobStatus.RUNNING
            for endpoint in job.endpoints
        ]

    # -- task managers -----------------------------------------------------------------------

    def used_slots(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for job in self.jobs.values():
            if not job.status.terminal:
                for tm in job.placement:
                    used[tm] = used.get(tm, 0) + 1
        return used

    async def register(self, tm: TaskManagerInfo, reports: list[dict]) -> dict[str, Any]:
        tm_id = tm.id
        self.task_managers[tm_id] = tm
        log.info("task manager %s registered from %s with %d slots", tm_id, tm.host, tm.slots)
        reported = {report["deployment_id"] for report in reports}
        for job in list(self.jobs.values()):
            if job.per_task_manager:
                instance = job.instances.get(tm_id)
                if (
                    instance is not None
                    and instance.live
                    and not job.status.terminal
                    and instance.deployment_id not in reported
                ):
                    await self._drop_instances(job, [tm_id], "its task manager no longer runs it")
            elif (
                tm_id in job.placement
                and job.status in (JobStatus.RUNNING, JobStatus.RECOVERING, JobStatus.CANCELLING)
                and job.deployment_id not in reported
            ):
                await self._fail_over(job, "its task manager no longer runs it")
        answer = await self.heartbeat(tm_id, reports, tm.draining)
        assert answer is not None  # it is registered now
        return answer

    async def deregister(self, tm_id: str) -> bool:
        """A task manager leaves (it drained): its jobs fail over now, not after the heartbeat
        timeout. False if it is unknown."""
        tm = self.task_managers.pop(tm_id, None)
        if tm is None:
            return False
        log.info("task manager %s (%s) left", tm_id, tm.host)
        await self._handle_missing_task_managers(only=tm_id)
        await self._schedule()
        return True

    async def heartbeat(
        self, tm_id: str, reports: list[dict], draining: bool = False
    ) -> dict[str, Any] | None:
        """Take a task manager's report; None if it is unknown (it must register again). A
        draining task manager gets no new work."""
        tm = self.task_managers.get(tm_id)
        if tm is None:
            return None
        tm.last_heartbeat = time.monotonic()
        if draining and not tm.draining:
            log.info("task manager %s (%s) is draining: no new work for it", tm_id, tm.host)
            tm.draining = True
        cancel: list[str] = []
        abort: list[str] = []
        release: list[str] = []
        for report in reports:
            deployment_id = report["deployment_id"]
            status = DeploymentStatus(report["status"])
            job = self.jobs.get(report["job_id"])
            if job is None or job.deployment_on(tm_id) != deployment_id:
                (release if status.terminal else abort).append(deployment_id)
                continue
            if job.per_task_manager:
                await self._update_instance(job, tm_id, status, report)
            else:
                await self._update(job, tm_id, status, report)
            if status.terminal:
                release.append(deployment_id)
            elif job.status is JobStatus.CANCELLING:
                cancel.append(deployment_id)
        await self._schedule()
        reported = {report["deployment_id"] for report in reports}
        deploy = [
            self._descriptor(job, tm_id)
            for job in self.jobs.values()
            if self._to_deploy(job, tm_id) and job.deployment_on(tm_id) not in reported
        ]
        directory: dict[str, list[str]] = {}
        for job in self.jobs.values():
            if job.status is JobStatus.RUNNING and job.endpoints:
                directory.setdefault(job.name, []).extend(job.endpoints)
        savepoints = [
            request.message(job.deployment_id)
            for job in self.jobs.values()
            if job.placement and job.placement[0] == tm_id
            for request in self.savepoint_requests.of(job.id)
        ]
        return {
            "deploy": deploy,
            "cancel": cancel,
            "abort": abort,
            "release": release,
            "endpoints": directory,
            "savepoints": savepoints,
        }

    async def _update(
        self, job: JobRecord, tm_id: str, status: DeploymentStatus, report: dict
    ) -> None:
        """Apply a report about one deployment of the job's current attempt."""
        before = (job.status, job.latest_checkpoint, tuple(job.endpoints), len(job.savepoints))
        self.savepoint_requests.report(job, report.get("savepoints"))
        job.reported[tm_id] = str(status)
        self._deployment_metrics.setdefault(job.id, {})[tm_id] = report.get("metrics", {})
        self._deployment_endpoints.setdefault(job.id, {})[tm_id] = report.get("endpoints", [])
        job.metrics = sum_metrics(
            [job.previous_metrics, *self._deployment_metrics[job.id].values()]
        )
        job.endpoints = [e for ends in self._deployment_endpoints[job.id].values() for e in ends]
        if job.metrics.get("last_checkpoint_id") is not None:
            job.latest_checkpoint = job.metrics["last_checkpoint_id"]
        statuses = [DeploymentStatus(job.reported.get(tm, "STARTING")) for tm in job.task_managers]
        if status is DeploymentStatus.FAILED:
            await self._on_failure(job, report.get("error") or "unknown error")
        elif all(s.terminal for s in statuses):
            job.placement, job.endpoints = [], []
            if job.status is JobStatus.CANCELLING or DeploymentStatus.CANCELED in statuses:
                job.status = JobStatus.CANCELED
            else:
                job.status = JobStatus.FINISHED
            await self.savepoint_requests.settle(job, f"the job ended ({job.status}) first")
            log.info("job %s (%s) %s", job.id, job.name, job.status)
        elif job.status in (JobStatus.DEPLOYING, JobStatus.RECOVERING) and all(
            s is DeploymentStatus.RUNNING or s.terminal for s in statuses
        ):
            job.status = JobStatus.RUNNING
        after = (job.status, job.latest_checkpoint, tuple(job.endpoints), len(job.savepoints))
        if after != before:
            await self._save(job)

    async def _update_instance(
        self, job: JobRecord, tm_id: str, status: DeploymentStatus, report: dict
    ) -> None:
        """Apply a report about the instance of a per-task-manager job on `tm_id`."""
        before = job.status
        metrics = self._deployment_metrics.setdefault(job.id, {})
        if instances.apply_report(job, tm_id, status, report, metrics):
            if status is DeploymentStatus.FAILED:
                log.warning("job %s (%s): %s", job.id, job.name, job.error)
            if job.status.terminal and before is not job.status:
                log.info("job %s (%s) %s", job.id, job.name, job.status)
            await self._save(job)

    async def _drop_instances(self, job: JobRecord, tm_ids: list[str], reason: str) -> None:
        """Forget the instances of a per-task-manager job on `tm_ids`."""
        for tm_id in tm_ids:
            log.info(
                "job %s (%s): instance %s on task manager %s ends: %s",
                job.id,
                job.name,
                job.instances[tm_id].deployment_id,
                tm_id,
                reason,
            )
        instances.drop(job, tm_ids, self._deployment_metrics.get(job.id, {}))
        await self._save(job)

    def _to_deploy(self, job: JobRecord, tm_id: str) -> bool:
        """Whether `tm_id` should start its deployment of the job (until it reports it)."""
        if job.per_task_manager:
            return instances.to_deploy(job, tm_id)
        return (
            tm_id in job.placement
            and job.status is JobStatus.DEPLOYING
            and tm_id not in job.reported
        )

    async def _on_failure(self, job: JobRecord, error: str) -> None:
        """A deployment failed: restart a distributed job (a lost peer, or within
        `restart.attempts`; a single-process deployment already used them), else fail it."""
        distributed = len(job.task_managers) > 1
        peer_lost = error.startswith("PeerLost")
        attempts = Configuration(job.config).get("restart.attempts")
        if distributed and (peer_lost or job.failures < attempts):
            if not peer_lost:
                job.failures += 1
            await self._fail_over(job, error)
            return
        job.status, job.error = JobStatus.FAILED, error
        job.placement, job.endpoints = [], []
        await self.savepoint_requests.settle(job, f"the job failed first: {error}")
        log.info("job %s (%s) FAILED: %s", job.id, job.name, error)

    def _descriptor(self, job: JobRecord, tm_id: str) -> dict[str, Any]:
        """What task manager `tm_id` needs to run its slots of the job's current attempt (or
        its instance of a per-task-manager job)."""
        if job.per_task_manager:
            tm = self.task_managers.get(tm_id)
            return instances.descriptor(job, tm_id, tm.exchange_address if tm else "")
        addresses = [
            tm.exchange_address if (tm := self.task_managers.get(t)) else "" for t in job.placement
        ]
        return {
            "deployment_id": job.deployment_id,
            "job_id": job.id,
            "name": job.name,
            "attempt": job.attempt,
            "parallelism": job.parallelism,
            "slots": [slot for slot, t in enumerate(job.placement) if t == tm_id],
            "slot_addresses": addresses,
            "config": job.config,
            "artifact": dict(vars(job.artifact)),
            "restore_from": job.restore_from,
        }

    # -- internals ---------------------------------------------------------------------------

    async def _fail_over(self, job: JobRecord, reason: str) -> None:
        stopped = await self.savepoint_requests.settle(
            job, f"the job failed over before the savepoint completed ({reason})"
        )
        if job.status is JobStatus.CANCELLING or stopped:
            job.status = JobStatus.CANCELED
        else:
            log.warning(
                "job %s (%s) restarts from checkpoint %s: %s",
                job.id,
                job.name,
                job.latest_checkpoint,
                reason,
            )
            job.status = JobStatus.RESTARTING
            job.failovers += 1
        job.placement, job.reported, job.endpoints = [], {}, []
        job.previous_metrics = dict(job.metrics)  # the new attempt's counters add to these
        self._deployment_metrics.pop(job.id, None)
        self._deployment_endpoints.pop(job.id, None)
        await self._save(job)

    async def _schedule(self) -> None:
        used = self.used_slots()
        jobs = sorted(self.jobs.values(), key=lambda job: job.submitted_ms)
        now = time.monotonic()
        alive = [
            tm
            for tm in self.task_managers.values()
            if now - tm.last_heartbeat <= self.fresh_s and not tm.draining
        ]
        for job in jobs:
            ending = job.status.terminal or job.status is JobStatus.CANCELLING
            if not job.per_task_manager or ending:
                continue
            placed = instances.place_instances(job, alive, used)
            if placed:
                instances.refresh(job)
                log.info(
                    "job %s (%s): new instances on task managers %s",
                    job.id,
                    job.name,
                    ", ".join(placed),
                )
                await self._save(job)
        for job in jobs:
            if job.per_task_manager or job.status not in WAITING:
                continue
            candidates = [tm for tm in alive if scheduler.matches(tm, job.label)]
            placement = scheduler.place(job.parallelism, candidates, used)
            if placement is None:
                continue
            job.attempt += 1
            job.placement, job.reported = placement, {}
            job.status = JobStatus.DEPLOYING
            for tm in placement:
                used[tm] = used.get(tm, 0) + 1
            log.info(
                "job %s (%s) attempt %d deployed to task managers %s",
                job.id,
                job.name,
                job.attempt,
                ", ".join(job.task_managers),
            )
            await self._save(job)

    async def _save(self, job: JobRecord) -> None:
        async with self._save_lock:
            await asyncio.to_thread(self.ha.save, job)
