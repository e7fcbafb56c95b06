"""Slot placement: a job with parallelism p takes p slots (slot i holds subtask i of every
operator of the job, as slot sharing does in Flink).

A job goes to one task manager if one has the slots (no network between its subtasks): the one
with the most free slots that fit, spreading jobs so that losing a task manager affects few. Ties
go to the longest-registered one, so placement is deterministic. Otherwise its slots are spread
over the task managers with the most free slots, fewest task managers first. A job that asks for
a label (`placement.taskmanager-label`) goes only to task managers that carry it (`matches`).
"""

from collections.abc import Iterable

from streamlet.cluster.model import TaskManagerInfo


def matches(tm: TaskManagerInfo, label: str) -> bool:
    """Whether task manager `tm` may run a job that asks for `label` ("": any task manager)."""
    return not label or label in tm.labels


def place(
    parallelism: int, task_managers: Iterable[TaskManagerInfo], used: dict[str, int]
) -> list[str] | None:
    """The task manager of each slot of a job of `parallelism`, or None if the slots are not
    there."""
    task_managers = list(task_managers)
    free = {tm.id: tm.slots - used.get(tm.id, 0) for tm in task_managers}
    order = sorted(
        (tm for tm in task_managers if free[tm.id] > 0),
        key=lambda tm: (-free[tm.id], tm.registered_ms),
    )
    if order and free[order[0].id] >= parallelism:
        return [order[0].id] * parallelism
    placement: list[str] = []
    for tm in order:
        placement += [tm.id] * min(free[tm.id], parallelism - len(placement))
    return placement if len(placement) == parallelism else None
