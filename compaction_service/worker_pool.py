"""The compaction service's worker processes, driven from the asyncio event loop.

Each worker is one spawned process (no fork of the threaded gRPC server) connected by a pipe. It
runs one task at a time: it receives `(task_id, spec)`, confines the spec to the allowed roots
(`RootGuard.confine`, right before any file is opened: a refusal is `TaskDenied`), calls the
compaction function (by default `run_compaction`, the same function the local compactor runs)
with the service's own storage options, and sends back the result or the error. The parent
never blocks the event loop: it learns about messages through `loop.add_reader` on the pipe.

Invariants:
- A worker has at most one task in flight (`Worker.pending`); the scheduler guarantees it.
- `kill` stops a task for real: the process is SIGKILLed, the pending `run` raises `WorkerLost`,
  and the slot is unusable until `replace` has started a fresh process. The caller deletes the
  task's partial outputs (the process cannot).
- A worker whose parent dies exits within a second, also in the middle of a task
  (`statebackend.lifeline`); a pipe that closes ends an idle worker at once.
"""

import asyncio
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from compaction_service.security import AccessDenied, RootGuard
from statebackend.lifeline import exit_with_parent
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, run_compaction

CompactionFn = Callable[[CompactionSpec, Mapping[str, Any], str], CompactionResult]
_READY_TIMEOUT_S = 60.0


class WorkerLost(Exception):
    """The worker process died or was killed while running a task."""


class TaskFailed(Exception):
    """The compaction raised in the worker; the message names the error type."""


class TaskDenied(TaskFailed):
    """The worker refused the task: it touches a location outside the allowed roots."""


def _worker_main(
    conn: Connection,
    storage_options: Mapping[str, Any],
    fn: CompactionFn,
    creator: str,
    guard: RootGuard,
    parent_pid: int,
) -> None:
    """The worker process: run tasks until the pipe closes or a None arrives."""
    # The parent decides when workers stop (a SIGTERM to the process group drains the service,
    # which lets running tasks finish); a dead parent ends them anyway (exit_with_parent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent(parent_pid)  # also in the middle of a task
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        task_id, spec = message
        try:
            spec = guard.confine(spec)  # again: a link may have changed while the task waited
        except AccessDenied as e:
            conn.send(("denied", task_id, str(e)))
            continue
        try:
            result = fn(spec, storage_options, creator)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which answers the RPC
            conn.send(("error", task_id, f"{type(e).__name__}: {e}"))
        else:
            conn.send(("ok", task_id, result))


@dataclass
class Worker:
    index: int
    process: Any = None  # multiprocessing.process.BaseProcess
    conn: Connection | None = None
    alive: bool = False
    pending: "asyncio.Future[Any] | None" = None
    completed: int = 0
    busy_seconds: float = 0.0
    ready: "asyncio.Future[None] | None" = field(default=None, repr=False)


class WorkerPool:
    def __init__(
        self,
        size: int,
        guard: RootGuard,
        storage_options: Mapping[str, Any] | None = None,
        compaction_fn: CompactionFn = run_compaction,
    ) -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._ctx = multiprocessing.get_context("spawn")
        self._guard = guard
        self._storage_options = dict(storage_options or {})
        self._fn = compaction_fn
        self._creator = f"remote:{socket.gethostname()}"
        self.workers = [Worker(i) for i in range(size)]

    async def start(self) -> None:
        """Start every worker and wait until all are ready."""
        await asyncio.gather(*(self._spawn(w) for w in self.workers))

    async def _spawn(self, w: Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe()
        w.process = self._ctx.Process(
            target=_worker_main,
            args=(
                child, self._storage_options, self._fn, self._creator, self._guard, os.getpid()
            ),
            name=f"compaction-worker-{w.index}",
            daemon=True,
        )
        # start() only forks and execs (about 2 ms); the slow part, the child's imports, is
        # awaited below. Starting synchronously means a started process is always recorded.
        w.process.start()
        child.close()
        w.conn = parent
        w.ready = loop.create_future()
        loop.add_reader(parent.fileno(), self._on_readable, w, parent)
        await asyncio.wait_for(w.ready, _READY_TIMEOUT_S)
        w.alive = True

    def _on_readable(self, w: Worker, conn: Connection) -> None:
        # Messages are small (a result's metadata) and written whole, so recv() does not wait.
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self._lost(w, conn)
            return
        kind = message[0]
        if kind == "ready":
            if w.ready is not None and not w.ready.done():
                w.ready.set_result(None)
            return
        pending, w.pending = w.pending, None
        if pending is None or pending.done():
            return  # the task was abandoned meanwhile
        if kind == "ok":
            pending.set_result(message[2])
        elif kind == "denied":
            pending.set_exception(TaskDenied(message[2]))
        else:
            pending.set_exception(TaskFailed(message[2]))

    def _lost(self, w: Worker, conn: Connection) -> None:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        conn.close()
        if w.conn is conn:
            w.conn = None
            w.alive = False
        error = WorkerLost(f"compaction worker {w.index} exited")
        for future in (w.ready, w.pending):
            if future is not None and not future.done():
                future.set_exception(error)
        w.pending = None

    async def run(self, index: int, task_id: str, spec: CompactionSpec) -> CompactionResult:
        """Run one task on worker `index`; WorkerLost if the worker dies, TaskFailed if it fails
        (TaskDenied if the worker refuses its locations)."""
        w = self.workers[index]
        if not w.alive or w.conn is None:
            raise WorkerLost(f"compaction worker {index} is not running")
        if w.pending is not None:
            raise RuntimeError(f"compaction worker {index} is busy")
        w.pending = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        try:
            w.conn.send((task_id, spec))
            result: CompactionResult = await w.pending
        finally:
            w.busy_seconds += time.perf_counter() - started
        w.completed += 1
        return result

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` now; its running task raises WorkerLost."""
        process = self.workers[index].process
        if process is not None and process.is_alive():
            process.kill()

    async def replace(self, index: int) -> None:
        """Start a fresh process for worker `index` (killing the old one if it still runs)."""
        w = self.workers[index]
        self.kill(index)
        if w.process is not None:
            await asyncio.get_running_loop().run_in_executor(None, w.process.join)
        if w.conn is not None:
            self._lost(w, w.conn)
        await self._spawn(w)

    async def close(self) -> None:
        """Stop every worker (running tasks are abandoned) and reap the processes."""
        loop = asyncio.get_running_loop()
        for w in self.workers:
            self.kill(w.index)
        for w in self.workers:
            if w.process is not None:
                await loop.run_in_executor(None, w.process.join)
            if w.conn is not None:
                self._lost(w, w.conn)
