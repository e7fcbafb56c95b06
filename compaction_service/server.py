"""The compaction service: the gRPC servicer, the server's lifecycle and its configuration.

A Compact request is decoded and checked (INVALID_ARGUMENT, PERMISSION_DENIED; a request that
does not decode at all is answered INVALID_ARGUMENT by `UndecodableRequests`, with one
rate-limited log line), confined to the allowed roots (its tasks carry the real `db_root` and
input roots, and each worker checks again before it opens a file), split into subcompactions when
it is large enough, admitted as tasks (RESOURCE_EXHAUSTED at once when the queue is full) and
awaited. Every
request gets a fresh run token, and each of its tasks writes under its own run prefix
(`files.service_run_prefix`, the naming rules of docs/lsm-protocol.md): inside the prefix the
primary protects, but unique to this run and piece, so deleting a run's outputs never touches
those of another run of the same spec (e.g. the client's local fallback).

If the client goes away (its deadline passes, or it cancels), gRPC cancels the handler and every
task of the request is stopped and its outputs deleted. A result that is ready only after the
deadline is deleted instead of returned. The service's own storage options (DFS endpoint and
credentials) come from its configuration, never from a request.

`CompactionServer.drain(grace_s)` stops taking work without going away: health answers NOT_SERVING
at once (a readiness probe fails, the pod leaves a headless Service), a new Compact call is
refused with UNAVAILABLE (the client tries another endpoint or compacts locally, at no cost), and
the calls that run get `grace_s` seconds to finish; those still running then end with
UNAVAILABLE (their outputs deleted; the client compacts locally). `stop()` then releases the port
and the workers. A task manager's SIGTERM drains every service its jobs run (the job registers
`drain` with `RuntimeContext.on_drain`); `streamlet compaction-service` drains on SIGTERM too.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from compaction_service.convert import result_to_proto, spec_from_proto
from compaction_service.dispatcher import Dispatcher, JobCancelled
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from compaction_service.scheduler import QueueFull, Scheduler, Task, make_policy
from compaction_service.security import (
    AccessDenied,
    RateLimitedLog,
    RootGuard,
    TokenInterceptor,
    UndecodableRequests,
    server_credentials,
)
from compaction_service.subcompactions import input_bytes, join_results, subspecs
from compaction_service.worker_pool import (
    CompactionFn,
    TaskDenied,
    TaskFailed,
    WorkerLost,
    WorkerPool,
)
from statebackend.lsm.compaction_job import CompactionSpec, run_compaction
from statebackend.lsm.files import new_run_token, service_run_prefix

log = logging.getLogger("compaction_service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CompactionService"].full_name
UNDECODABLE_LOG_LIMIT = 10  # log lines about undecodable requests ...
UNDECODABLE_LOG_S = 60.0  # ... per this many seconds
STOPPED_CALLS_WAIT_S = 10.0  # for calls stopped at the end of a drain to clean up


class ServiceStopping(Exception):
    """The service's drain grace ended before the compaction did."""


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: mutual TLS (client certificates required)


@dataclass(frozen=True)
class ServiceConfig:
    allowed_roots: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (see CompactionServer.port)
    workers: int = 2
    policy: str = "round_robin"
    queue_capacity: int = 64  # tasks waiting for a worker
    per_db_capacity: int | None = None  # default: half the queue
    subcompaction_min_bytes: int = 8 << 20  # a piece reads at least this much
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    token: str | None = None
    tls: TlsConfig | None = None
    max_message_bytes: int = 16 << 20
    compaction_fn: CompactionFn = run_compaction


class CompactionServicer(pb_grpc.CompactionServiceServicer):
    def __init__(self, config: ServiceConfig, dispatcher: Dispatcher, guard: RootGuard) -> None:
        self.config = config
        self.guard = guard
        self.dispatcher = dispatcher
        self._jobs: dict[tuple[str, str], list[Task]] = {}  # (db_root, compaction_id) -> tasks
        self.draining = False  # set by CompactionServer.drain: new calls are refused
        self.calls = 0  # Compact calls being handled
        self.idle = asyncio.Event()  # set while no Compact call is handled
        self.idle.set()
        self.stopping = asyncio.Event()  # the drain's grace ended: running calls stop

    def _pieces(self, spec: CompactionSpec, allowed: bool) -> int:
        if not allowed:
            return 1
        by_size = input_bytes(spec) // self.config.subcompaction_min_bytes
        return max(1, min(self.config.workers, by_size))

    async def Compact(
        self, request: pb.CompactRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompactResponse:
        if self.draining:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the compaction service is draining: it takes no new compactions",
            )
        self.calls += 1
        self.idle.clear()
        try:
            return await self._compact(request, context)
        finally:
            self.calls -= 1
            if self.calls == 0:
                self.idle.set()

    async def _compact(
        self, request: pb.CompactRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompactResponse:
        try:
            spec = spec_from_proto(request.spec)
        except (ValueError, TypeError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed spec: {e}")
        try:  # resolving links touches the file system: off the event loop
            confined = await asyncio.to_thread(self.guard.confine, spec)
        except AccessDenied as e:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        key = (spec.db_root, spec.compaction_id)
        if key in self._jobs:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, f"compaction {spec.compaction_id} is running"
            )
        run = new_run_token()
        pieces = subspecs(confined, self._pieces(spec, request.allow_subcompactions))
        cost = input_bytes(spec) // len(pieces)  # an estimate: ranges cut the bytes about evenly
        tasks = [
            Task(
                f"{spec.compaction_id}/{run}/{i}",
                replace(sub, output_prefix=service_run_prefix(spec.output_prefix, run, i)),
                cost,
            )
            for i, sub in enumerate(pieces)
        ]
        loop = asyncio.get_running_loop()
        queued_at = loop.time()
        try:
            futures = self.dispatcher.submit(tasks)
        except QueueFull as e:
            self.dispatcher.totals.rejected += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        self.dispatcher.totals.accepted += 1
        self._jobs[key] = tasks
        log.info(
            "perform compaction on compaction-service side: compaction_id=%s db_root=%s "
            "inputs=%d input_bytes=%d output_level=%d subcompactions=%d",
            spec.compaction_id,
            spec.db_root,
            sum(len(i.tables) for i in spec.inputs),
            input_bytes(spec),
            spec.output_level,
            len(tasks),
        )
        try:
            results = await self._results(futures)
        except BaseException as e:
            for task in tasks:  # stop the other pieces; delete whatever any piece wrote
                self.dispatcher.cancel(task)
            if isinstance(e, asyncio.CancelledError):
                log.info("compaction %s: the client went away; stopped", spec.compaction_id)
                raise
            await self._abort_failed(context, spec, e)
            raise
        finally:
            del self._jobs[key]
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # Finished just as the deadline passed (before gRPC cancelled this handler): the
            # client has fallen back already, so this result must not survive.
            for task in tasks:
                self.dispatcher.cancel(task)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "finished after the deadline")
        started = min(t.started_at if t.started_at is not None else queued_at for t in tasks)
        return pb.CompactResponse(
            result=result_to_proto(join_results(spec.compaction_id, results)),
            subcompactions=len(tasks),
            queue_seconds=max(0.0, started - queued_at),
        )

    async def _results(self, futures: list[asyncio.Future[Any]]) -> list[Any]:
        """The pieces' results; `ServiceStopping` if the drain's grace ends first."""
        gathered = asyncio.gather(*futures)
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait([gathered, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            finished = gathered.done()
            if not finished:
                gathered.cancel()
        if not finished:
            raise ServiceStopping(
                "the compaction service stopped before the compaction finished (its drain "
                "grace ended)"
            )
        return gathered.result()

    async def _abort_failed(
        self, context: grpc.aio.ServicerContext, spec: CompactionSpec, e: BaseException
    ) -> None:
        log.warning("compaction %s failed: %s", spec.compaction_id, e)
        if isinstance(e, ServiceStopping):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if isinstance(e, JobCancelled):
            await context.abort(grpc.StatusCode.CANCELLED, str(e))
        if isinstance(e, WorkerLost):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        if isinstance(e, TaskDenied):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(e))
        if isinstance(e, TaskFailed):
            await context.abort(grpc.StatusCode.INTERNAL, str(e))

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        tasks = self._jobs.get((request.db_root, request.compaction_id))
        if tasks is None:
            return pb.CancelResponse(cancelled=False)
        log.info("cancelling compaction %s of %s", request.compaction_id, request.db_root)
        for task in tasks:
            self.dispatcher.cancel(task)
        return pb.CancelResponse(cancelled=True)

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        d = self.dispatcher
        s = d.scheduler
        now = asyncio.get_running_loop().time()
        t = d.totals
        return pb.StatusResponse(
            policy=s.policy.name,
            queued=s.queued,
            queue_capacity=s.capacity,
            running=[
                pb.JobStatus(
                    compaction_id=task.spec.compaction_id,
                    db_root=task.db,
                    worker=w,
                    running_seconds=now - (task.started_at or now),
                )
                for w, task in enumerate(s.running)
                if task is not None
            ],
            workers=[
                pb.WorkerStatus(
                    worker=w.index,
                    alive=w.alive,
                    queued=len(s.queues[w.index]),
                    queued_bytes=s.loads[w.index],
                    running_compaction_id=(
                        s.running[w.index].spec.compaction_id if s.running[w.index] else ""
                    ),
                    completed=w.completed,
                    busy_seconds=w.busy_seconds,
                )
                for w in d.pool.workers
            ],
            totals=pb.Totals(
                accepted=t.accepted,
                completed=t.completed,
                failed=t.failed,
                cancelled=t.cancelled,
                rejected=t.rejected,
                input_bytes=t.input_bytes,
                output_bytes=t.output_bytes,
                cpu_seconds=t.cpu_seconds,
            ),
        )


class CompactionServer:
    """One running service: `await start()`, then `port`; `await stop()` releases everything."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.port = 0
        guard = RootGuard(config.allowed_roots)
        pool = WorkerPool(config.workers, guard, config.storage_options, config.compaction_fn)
        scheduler = Scheduler(
            config.workers,
            make_policy(config.policy),
            config.queue_capacity,
            config.per_db_capacity,
        )
        self.dispatcher = Dispatcher(pool, scheduler, config.storage_options, guard)
        self.servicer = CompactionServicer(config, self.dispatcher, guard)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        c = self.config
        await self.dispatcher.start()
        interceptors: list[grpc.aio.ServerInterceptor] = [
            UndecodableRequests(RateLimitedLog(log, UNDECODABLE_LOG_LIMIT, UNDECODABLE_LOG_S))
        ]
        if c.token:
            interceptors.append(TokenInterceptor(c.token))  # inner: refused calls decode nothing
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", c.max_message_bytes),
                ("grpc.max_send_message_length", c.max_message_bytes),
            ],
        )
        pb_grpc.add_CompactionServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        address = f"{c.host}:{c.port}"
        if c.tls is not None:
            creds = server_credentials(c.tls.cert_file, c.tls.key_file, c.tls.client_ca_file)
            self.port = server.add_secure_port(address, creds)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "compaction service listening on %s:%d (workers=%d, policy=%s, roots=%s)",
            c.host,
            self.port,
            c.workers,
            c.policy,
            ",".join(c.allowed_roots),
        )
        return self.port

    async def drain(self, grace_s: float) -> None:
        """Stop taking work and let the running calls finish within `grace_s` (the module's
        docstring says how); the server answers health checks until `stop()`."""
        servicer = self.servicer
        if servicer.draining:
            return
        servicer.draining = True
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info(
            "compaction service on port %d draining: %d call(s) running, grace %.1f s",
            self.port,
            servicer.calls,
            grace_s,
        )
        try:
            await asyncio.wait_for(servicer.idle.wait(), grace_s)
        except TimeoutError:
            log.warning(
                "compaction service on port %d: %d call(s) still running after the drain grace: "
                "stopping them (their clients compact locally)",
                self.port,
                servicer.calls,
            )
            servicer.stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(servicer.idle.wait(), STOPPED_CALLS_WAIT_S)
        log.info("compaction service on port %d drained", self.port)

    async def stop(self, grace: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        await self.dispatcher.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


class BackgroundService:
    """A `CompactionServer` on its own event loop in a daemon thread (for embedding and tests)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.server = CompactionServer(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="compaction-service", daemon=True
        )

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coroutine: Any) -> Any:
        """Run a coroutine on the service's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.server.stop(0))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self) -> "BackgroundService":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
