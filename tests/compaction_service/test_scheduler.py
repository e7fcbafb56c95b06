"""Scheduling policies, fairness and admission; splitting into subcompactions."""

from dataclasses import replace

import pytest

from compaction_service.scheduler import QueueFull, Scheduler, Task, make_policy
from compaction_service.subcompactions import join_results, split_ranges, subspecs
from statebackend.lsm.compaction_job import CompactionInput, run_compaction
from statebackend.lsm.table import TableMeta
from tests.compaction_service.helpers import make_spec, read_outputs, write_tables

BASE = make_spec("file:///db/a", [])
TABLE = TableMeta("t.sst", 1, b"a", b"z", 1, 0, None, "test")


def _task(name: str, db: str = "a", cost: int = 100, l0: bool = True, score: float = 1.0) -> Task:
    spec = replace(
        BASE,
        compaction_id=name,
        db_root=f"file:///db/{db}",
        inputs=(CompactionInput(0 if l0 else 2, (TABLE,)),),
        score=score,
    )
    return Task(name, spec, cost)


def _drain(s: Scheduler, worker: int) -> list[str]:
    order = []
    while (task := s.next_task(worker)) is not None:
        order.append(task.task_id)
        s.finish(worker)
    return order


def test_round_robin_places_in_turn_and_never_steals() -> None:
    s = Scheduler(2, make_policy("round_robin"), capacity=10)
    assert s.admit([_task("a", cost=1000), _task("b"), _task("c"), _task("d")]) == [0, 1, 0, 1]
    assert _drain(s, 1) == ["b", "d"]
    assert s.next_task(1) is None  # worker 0 still has "a" and "c" queued


def test_least_loaded_places_by_bytes_and_steals() -> None:
    s = Scheduler(2, make_policy("least_loaded"), capacity=10)
    assert s.admit([_task("big", cost=1000), _task("s1"), _task("s2"), _task("s3")]) == [0, 1, 1, 1]
    assert s.loads == [1000, 300]
    # Worker 1 runs its own queue, then, idle, steals from worker 0.
    assert _drain(s, 1) == ["s1", "s2", "s3", "big"]
    assert s.loads == [0, 0]


def test_priority_runs_l0_first_then_by_score() -> None:
    s = Scheduler(1, make_policy("priority"), capacity=10)
    s.admit(
        [
            _task("deep-low", l0=False, score=1.5),
            _task("deep-high", l0=False, score=9.0),
            _task("l0-low", score=1.0),
            _task("l0-high", score=4.0),
        ]
    )
    assert _drain(s, 0) == ["l0-high", "l0-low", "deep-high", "deep-low"]


@pytest.mark.parametrize("policy", ["round_robin", "least_loaded", "priority"])
def test_a_busy_database_does_not_starve_another(policy: str) -> None:
    s = Scheduler(2, make_policy(policy), capacity=20, per_db_capacity=10)
    s.admit([_task(f"busy{i}", db="busy") for i in range(8)])
    s.admit([_task("quiet", db="quiet", l0=False, score=0.0)])
    first = [s.next_task(0), s.next_task(1)]
    assert [t.task_id for t in first if t] == ["busy0", "busy1"]
    s.finish(1)
    # Whichever worker holds it, the quiet database goes before the busy one's backlog: it has
    # nothing running and was never served.
    worker = 0 if any(t.task_id == "quiet" for t in s.queues[0]) else 1
    if worker == 0:
        s.finish(0)
    task = s.next_task(worker)
    assert task is not None and task.task_id == "quiet"


def test_admission_is_bounded_all_or_nothing_and_per_database() -> None:
    s = Scheduler(1, make_policy("round_robin"), capacity=4, per_db_capacity=2)
    s.admit([_task("a1"), _task("a2")])
    with pytest.raises(QueueFull):
        s.admit([_task("a3")])  # database a has its share
    s.admit([_task("b1", db="b")])
    with pytest.raises(QueueFull):
        s.admit([_task("c1", db="c"), _task("c2", db="c")])  # would exceed the queue: none
    assert s.queued == 3
    running = s.next_task(0)
    assert running is not None and not s.remove(running)
    assert s.remove(s.queues[0][0]) and s.queued == 1


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="round_robin"):
        make_policy("fastest")


def test_subcompactions_cover_the_range_evenly_and_join_to_the_whole(tmp_path) -> None:
    root = f"file://{tmp_path}/db"
    spec = make_spec(root, write_tables(root, tables=3, entries=6000))
    ranges = split_ranges(spec, 3)
    assert len(ranges) == 3 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    pieces = [run_compaction(p) for p in subspecs(spec, 3)]
    sizes = [p.stats.input_entries for p in pieces]
    assert max(sizes) < 1.3 * min(sizes)
    joined = join_results(spec.compaction_id, pieces)
    assert read_outputs(root, joined) == read_outputs(root, run_compaction(spec))
    assert joined.stats.output_entries == sum(p.stats.output_entries for p in pieces)


def test_subcompactions_respect_an_existing_key_range(tmp_path) -> None:
    root = f"file://{tmp_path}/db"
    spec = replace(
        make_spec(root, write_tables(root, tables=2, entries=2000)),
        key_range=(b"\x40", b"\xc0"),
    )
    ranges = split_ranges(spec, 2)
    assert ranges[0][0] == b"\x40" and ranges[-1][1] == b"\xc0" and len(ranges) == 2
    joined = join_results(spec.compaction_id, [run_compaction(p) for p in subspecs(spec, 2)])
    assert read_outputs(root, joined) == read_outputs(root, run_compaction(spec))
    assert subspecs(spec, 1) == [spec]
