"""Scheduling: which worker a task goes to, which task a worker runs next, and admission.

Pure bookkeeping, no I/O and no asyncio: the dispatcher calls it under the event loop's single
thread. Model: every worker has its own queue; `admit` places each task on a worker's queue (the
policy's `place`), and a worker that becomes free takes its next task with `next_task`.

Invariants:
- A task is in exactly one place: one worker's queue, running on one worker, or gone.
- `loads[w]` is the input bytes of the tasks queued on or running on worker `w`.
- Admission is all-or-nothing (a compaction's subcompactions are admitted together) and bounded:
  at most `capacity` tasks wait in the queues, and one database at most `per_db_capacity` of
  them, so a busy database always leaves room for others (`QueueFull` otherwise, answered with
  RESOURCE_EXHAUSTED at once).
- Fairness comes before the policy's order: a worker runs next a task of the database with the
  fewest tasks running right now, among those the one served least recently (round robin over
  databases), and only then the policy's order decides. So a database with a long backlog
  cannot starve another; the priority policy orders work within a database and between
  databases that are equally served.

Policies:
- `round_robin`: the reference's: tasks go to workers in turn, each queue runs in arrival order,
  and an idle worker never takes work queued on another.
- `least_loaded`: a task goes to the worker with the fewest queued bytes; an idle worker steals
  from the most loaded queue.
- `priority`: placed and stolen like least_loaded; level-0 compactions first (they block
  writers), then by compaction score (highest first), then arrival.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from statebackend.lsm.compaction_job import CompactionSpec


class QueueFull(Exception):
    """The queue (or the database's share of it) is full."""


@dataclass(eq=False)
class Task:
    """One unit of work for one worker: a compaction or one of its subcompactions."""

    task_id: str  # unique within the service
    spec: CompactionSpec
    cost: int  # input bytes (estimated for a subcompaction)
    seq: int = field(default=0)  # arrival order, set by `admit`
    queued_at: float | None = None  # event-loop time it was admitted, set by the dispatcher
    started_at: float | None = None  # event-loop time its worker started it, set by the dispatcher

    @property
    def db(self) -> str:
        return self.spec.db_root

    @property
    def l0(self) -> bool:
        return any(i.level == 0 and i.tables for i in self.spec.inputs)


class Policy(Protocol):
    name: str
    steals: bool  # an idle worker takes work queued on another worker

    def place(self, task: Task, loads: Sequence[int]) -> int:
        """The worker whose queue gets `task`."""
        ...

    def order(self, task: Task) -> tuple[float, ...]:
        """Sort key among tasks of equally served databases; smallest runs first."""
        ...


class RoundRobin:
    name = "round_robin"
    steals = False

    def __init__(self) -> None:
        self._next = 0

    def place(self, task: Task, loads: Sequence[int]) -> int:
        worker = self._next % len(loads)
        self._next = worker + 1
        return worker

    def order(self, task: Task) -> tuple[float, ...]:
        return (task.seq,)


class LeastLoaded:
    name = "least_loaded"
    steals = True

    def place(self, task: Task, loads: Sequence[int]) -> int:
        return min(range(len(loads)), key=lambda w: (loads[w], w))

    def order(self, task: Task) -> tuple[float, ...]:
        return (task.seq,)


class Priority(LeastLoaded):
    name = "priority"

    def order(self, task: Task) -> tuple[float, ...]:
        return (0 if task.l0 else 1, -task.spec.score, task.seq)


POLICIES: dict[str, type[RoundRobin] | type[LeastLoaded]] = {
    p.name: p for p in (RoundRobin, LeastLoaded, Priority)
}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None


class Scheduler:
    def __init__(
        self, workers: int, policy: Policy, capacity: int, per_db_capacity: int | None = None
    ) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError("workers and capacity must be >= 1")
        self.policy = policy
        self.capacity = capacity
        self.per_db_capacity = per_db_capacity or max(1, capacity // 2)
        self.queues: list[list[Task]] = [[] for _ in range(workers)]
        self.running: list[Task | None] = [None] * workers
        self.loads = [0] * workers
        self._seq = 0
        self._running_by_db: dict[str, int] = {}
        self._queued_by_db: dict[str, int] = {}
        self._tick = 0
        # When each database last started a task; forgotten when it has nothing queued or
        # running, so a database that comes back is served first.
        self._served: dict[str, int] = {}

    @property
    def queued(self) -> int:
        """Tasks waiting for a worker."""
        return sum(map(len, self.queues))

    @property
    def queued_bytes(self) -> int:
        """Input bytes of the tasks waiting for a worker."""
        return sum(task.cost for queue in self.queues for task in queue)

    @property
    def busy(self) -> int:
        """Workers running a task."""
        return sum(task is not None for task in self.running)

    def admit(self, tasks: Sequence[Task]) -> list[int]:
        """Queue all `tasks` (or none: QueueFull); returns the worker each was placed on."""
        dbs: dict[str, int] = {}
        for task in tasks:
            dbs[task.db] = dbs.get(task.db, 0) + 1
        if self.queued + len(tasks) > self.capacity:
            raise QueueFull(f"queue full ({self.queued} of {self.capacity} tasks waiting)")
        for db, count in dbs.items():
            if self._queued_by_db.get(db, 0) + count > self.per_db_capacity:
                raise QueueFull(
                    f"{db} has {self._queued_by_db.get(db, 0)} tasks waiting "
                    f"(at most {self.per_db_capacity} per database)"
                )
        placed = []
        for task in tasks:
            self._seq += 1
            task.seq = self._seq
            worker = self.policy.place(task, self.loads)
            self.queues[worker].append(task)
            self.loads[worker] += task.cost
            self._queued_by_db[task.db] = self._queued_by_db.get(task.db, 0) + 1
            placed.append(worker)
        return placed

    def next_task(self, worker: int) -> Task | None:
        """The task `worker` runs next (now marked running on it), or None."""
        if self.running[worker] is not None:
            raise RuntimeError(f"worker {worker} is already running a task")
        source = worker
        if not self.queues[worker] and self.policy.steals:
            source = max(
                range(len(self.queues)), key=lambda w: (len(self.queues[w]) > 0, self.loads[w])
            )
        queue = self.queues[source]
        if not queue:
            return None
        task = min(
            queue,
            key=lambda t: (
                self._running_by_db.get(t.db, 0),
                self._served.get(t.db, 0),
                self.policy.order(t),
            ),
        )
        self._tick += 1
        self._served[task.db] = self._tick
        queue.remove(task)
        self._drop_queued(task)
        self.loads[source] -= task.cost
        self.loads[worker] += task.cost
        self.running[worker] = task
        self._running_by_db[task.db] = self._running_by_db.get(task.db, 0) + 1
        return task

    def finish(self, worker: int) -> Task:
        """`worker`'s running task is over (done, failed or cancelled)."""
        task = self.running[worker]
        if task is None:
            raise RuntimeError(f"worker {worker} is not running a task")
        self.running[worker] = None
        self.loads[worker] -= task.cost
        left = self._running_by_db[task.db] - 1
        if left:
            self._running_by_db[task.db] = left
        else:
            del self._running_by_db[task.db]
            self._forget_if_idle(task.db)
        return task

    def remove(self, task: Task) -> bool:
        """Take a queued task out of its queue; False if it is not queued (running or gone)."""
        for worker, queue in enumerate(self.queues):
            if task in queue:
                queue.remove(task)
                self._drop_queued(task)
                self.loads[worker] -= task.cost
                return True
        return False

    def worker_of(self, task: Task) -> int | None:
        """The worker running `task`, if any."""
        for worker, running in enumerate(self.running):
            if running is task:
                return worker
        return None

    def _drop_queued(self, task: Task) -> None:
        left = self._queued_by_db[task.db] - 1
        if left:
            self._queued_by_db[task.db] = left
        else:
            del self._queued_by_db[task.db]
            self._forget_if_idle(task.db)

    def _forget_if_idle(self, db: str) -> None:
        if db not in self._queued_by_db and db not in self._running_by_db:
            self._served.pop(db, None)
