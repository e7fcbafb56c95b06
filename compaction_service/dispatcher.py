"""Runs scheduled tasks on the worker pool: one asyncio loop per worker, futures for callers.

Invariants:
- Every admitted task ends exactly once: its future gets a result, an exception (`TaskFailed`,
  `WorkerLost`, `JobCancelled`) or is cancelled by its awaiting caller; `finish` is called on the
  scheduler for every task that started.
- Outputs of a task that did not deliver its result (killed, failed, cancelled, or finished after
  its caller gave up) are deleted: every task writes under its own run prefix
  (`files.service_run_prefix`), so deleting by that prefix never touches another run's files.
  The deletion confines the spec to the allowed roots first (`RootGuard.confine`): it never
  lists or deletes outside them.
- `waits` records, for every task a worker starts, how long it waited since it was admitted
  (event-loop time); a task dropped from its queue (cancelled) is not recorded.
"""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compaction_service.scheduler import Scheduler, Task
from compaction_service.security import RootGuard
from compaction_service.worker_pool import TaskFailed, WorkerLost, WorkerPool
from statebackend.dfs import filesystem
from statebackend.lsm import files
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec

log = logging.getLogger(__name__)
_RESTART_PAUSE_S = 1.0


class JobCancelled(Exception):
    """The task was cancelled through the Cancel RPC (or the service is stopping)."""


def delete_outputs(
    spec: CompactionSpec, storage_options: Mapping[str, Any], guard: RootGuard
) -> list[str]:
    """`files.delete_outputs` of the spec's prefix, once the spec is confined to the allowed
    roots (AccessDenied, and nothing deleted, if its tables folder is no longer inside them)."""
    spec = guard.confine(spec)
    fs, root = filesystem(spec.db_root, storage_options)
    return files.delete_outputs(fs, root, spec.output_prefix)


@dataclass
class Totals:
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    cpu_seconds: float = 0.0


# Upper bounds (seconds) of the buckets of the wait before a task starts.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class WaitHistogram:
    """How long tasks waited for a worker: counts per bucket (`WAIT_BUCKETS`, then above the
    last), their sum and their number, as a Prometheus histogram reports them."""

    def __init__(self) -> None:
        self.counts = [0] * (len(WAIT_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(WAIT_BUCKETS) if seconds <= bound), -1)
        self.counts[index] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, the last `+Inf` (the number of waits)."""
        bounds = [*map(str, WAIT_BUCKETS), "+Inf"]
        counts = list(self.counts)
        return [(bound, sum(counts[: i + 1])) for i, bound in enumerate(bounds)]


class Dispatcher:
    def __init__(
        self,
        pool: WorkerPool,
        scheduler: Scheduler,
        storage_options: Mapping[str, Any],
        guard: RootGuard,
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self._guard = guard
        self.totals = Totals()
        self.waits = WaitHistogram()
        self._storage_options = dict(storage_options)
        self._futures: dict[Task, asyncio.Future[CompactionResult]] = {}
        self._wake = [asyncio.Event() for _ in pool.workers]
        self._loops: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self.pool.start()
        self._loops = [asyncio.create_task(self._worker_loop(w)) for w in range(len(self._wake))]

    async def close(self) -> None:
        for loop_task in self._loops:
            loop_task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for task, future in self._futures.items():
            if not future.done():
                future.set_exception(JobCancelled("the compaction service is stopping"))
            self._cleanup(task)
        self._futures.clear()
        await self.pool.close()
        await asyncio.gather(*self._cleanups, return_exceptions=True)

    def submit(self, tasks: list[Task]) -> list["asyncio.Future[CompactionResult]"]:
        """Queue `tasks` (all or none: QueueFull); their futures complete when they end."""
        self.scheduler.admit(tasks)
        loop = asyncio.get_running_loop()
        futures = []
        for task in tasks:
            task.queued_at = loop.time()
            future: asyncio.Future[CompactionResult] = loop.create_future()
            self._futures[task] = future
            futures.append(future)
        for event in self._wake:  # stealing policies let any idle worker take the work
            event.set()
        return futures

    def cancel(self, task: Task) -> None:
        """Stop `task` wherever it is and delete its outputs: dequeue it, kill its worker, or,
        when it already ended, delete what it wrote."""
        future = self._futures.get(task)
        if future is None:
            self._cleanup(task)
            return
        if not future.done():
            future.set_exception(JobCancelled(f"task {task.task_id} cancelled"))
            future.exception()  # retrieved: the caller may already have stopped awaiting it
        if self.scheduler.remove(task):
            del self._futures[task]
            self.totals.cancelled += 1
            return
        worker = self.scheduler.worker_of(task)
        if worker is not None:
            self.pool.kill(worker)  # the worker loop sees WorkerLost and cleans up

    def _cleanup(self, task: Task) -> None:
        """Delete `task`'s outputs in a thread; the deletion's task is kept until it is done."""
        cleanup = asyncio.create_task(self._delete(task))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    async def _delete(self, task: Task) -> None:
        try:
            deleted = await asyncio.to_thread(
                delete_outputs, task.spec, self._storage_options, self._guard
            )
        except Exception as e:  # noqa: BLE001 - the DB's garbage collector removes them later
            log.warning("could not delete outputs of %s: %s", task.task_id, e)
            return
        if deleted:
            log.info("deleted %d partial outputs of %s", len(deleted), task.task_id)

    async def _worker_loop(self, worker: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake[worker].wait()
            self._wake[worker].clear()
            while (task := self.scheduler.next_task(worker)) is not None:
                task.started_at = loop.time()
                self.waits.observe(task.started_at - (task.queued_at or task.started_at))
                try:
                    result = await self.pool.run(worker, task.task_id, task.spec)
                except (WorkerLost, TaskFailed) as e:
                    self._ended(worker, task, None, e)
                    if isinstance(e, WorkerLost):
                        await self._replace(worker)
                else:
                    self._ended(worker, task, result, None)

    async def _replace(self, worker: int) -> None:
        """Start a fresh process for `worker`, retrying until it starts (tasks queued on it
        wait meanwhile; their clients fall back when their deadlines pass)."""
        while True:
            try:
                await self.pool.replace(worker)
                return
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: retry after a pause
                log.error("could not restart compaction worker %d: %s", worker, e)
                await asyncio.sleep(_RESTART_PAUSE_S)

    def _ended(
        self,
        worker: int,
        task: Task,
        result: CompactionResult | None,
        error: Exception | None,
    ) -> None:
        self.scheduler.finish(worker)
        future = self._futures.pop(task, None)
        if result is not None and future is not None and not future.done():
            future.set_result(result)
            self.totals.completed += 1
            self.totals.input_bytes += result.stats.input_bytes
            self.totals.output_bytes += result.stats.output_bytes
            self.totals.cpu_seconds += result.stats.cpu_seconds
            return
        if future is not None and not future.done():
            assert error is not None
            future.set_exception(error)
            self.totals.failed += 1
        else:
            self.totals.cancelled += 1
        self._cleanup(task)
