"""Compaction debt (`statebackend.lsm.debt`): RocksDB's estimate of the bytes pending compaction on
hand-made versions of several shapes, and a real DB under writes whose compactions are held back:
its debt grows and its writer's stalls are counted, then the debt goes once compactions run; and
the runtime's view of it (`streamlet.metrics.JobMetrics`) through an lsm backend's store."""

import threading
import time
import uuid
from pathlib import Path

from statebackend import BackendConfig, create_backend
from statebackend.lsm.db import LsmDB
from statebackend.lsm.debt import STALLS, WriteStalls, debt_metrics, pending_compaction_bytes
from statebackend.lsm.meta import TableMeta
from statebackend.lsm.picker import PickerOptions
from statebackend.lsm.version import Version
from streamlet.metrics import JobMetrics
from tests.compaction_service.helpers import wait_until
from tests.lsm.options import small_options
from tests.lsm.test_db import GatedCompactor, key

# Targets: L1 1000 bytes, L2 10000; L3 is the bottom level (never a compaction input).
OPTIONS = PickerOptions(num_levels=4, l0_trigger=4, level_base_bytes=1000, level_multiplier=10)


def tables(*sizes: int) -> list[TableMeta]:
    """Tables of these sizes with disjoint ascending key ranges (a valid level >= 1)."""
    return [
        TableMeta(f"t{i}-{uuid.uuid4().hex[:6]}.sst", size, b"%04d" % i, b"%04da" % i, 1, 0,
                  None, "test")
        for i, size in enumerate(sizes)
    ]  # fmt: skip


def version(l0: list[int], *levels: list[int]) -> Version:
    return Version([tables(*l0), *(tables(*sizes) for sizes in levels)], OPTIONS.num_levels)


def test_nothing_is_pending_when_every_level_is_under_its_target() -> None:
    assert pending_compaction_bytes(Version.empty(4), OPTIONS) == 0
    assert pending_compaction_bytes(version([100] * 3, [400, 500], [9000], [10**9]), OPTIONS) == 0


def test_level0_below_its_trigger_counts_nothing_whatever_its_bytes() -> None:
    # 3 files of 600 bytes exceed level_base_bytes: RocksDB would count them, our picker (by file
    # count) does not compact them, and neither does the estimate.
    assert pending_compaction_bytes(version([600] * 3, [500]), OPTIONS) == 0


def test_level0_at_its_trigger_counts_level0_and_level1() -> None:
    # L0 400 + L1 500 rewritten; L1 then holds 900 < 1000: nothing further.
    assert pending_compaction_bytes(version([100] * 4, [200, 300]), OPTIONS) == 900


def test_level0_over_its_trigger_pushes_level1_over_its_target() -> None:
    # L0 500 + L1 800 = 1300; L1 then holds 1300: 300 over its target move into L2 (3000 bytes),
    # rewriting int(300 * (3000 / 1300 + 1)) = 992 more; L2 then holds 3300 < 10000.
    assert pending_compaction_bytes(version([100] * 5, [800], [3000]), OPTIONS) == 1300 + 992


def test_a_level_over_its_target_counts_its_excess_times_the_fan_out() -> None:
    # L1 holds 1500: 500 over, into L2's 5000 bytes: int(500 * (5000 / 1500 + 1)) = 2166.
    assert pending_compaction_bytes(version([100], [700, 800], [5000]), OPTIONS) == 2166


def test_an_excess_above_an_empty_level_costs_nothing_there_but_is_carried() -> None:
    # L1's 500 over its target move into an empty L2 at no cost; L2 then holds 500.
    assert pending_compaction_bytes(version([], [1500], [], [20000]), OPTIONS) == 0
    # Carried into a full L2, they push it over its target too: L1 adds
    # int(500 * (9800 / 1500 + 1)) = 3766; L2 holds 10300, 300 over, into the bottom level's
    # 20000 bytes: int(300 * (20000 / 10300 + 1)) = 882.
    assert pending_compaction_bytes(version([], [1500], [9800], [20000]), OPTIONS) == 3766 + 882


def test_the_bottom_level_is_never_an_input() -> None:
    assert pending_compaction_bytes(version([], [], [], [10**12]), OPTIONS) == 0
    # L2 (the last input level) over its target compacts into the bottom level:
    # 2000 over, int(2000 * (24000 / 12000 + 1)) = 6000.
    assert pending_compaction_bytes(version([], [], [12000], [24000]), OPTIONS) == 6000


def test_stalls_count_each_stop_once_and_time_the_one_in_progress() -> None:
    stalls = WriteStalls()
    stalls.stopped("memtables")
    stalls.stopped("memtables")  # the same wait goes on
    stalls.stopped("l0_files")  # its cause changed: a second stop
    time.sleep(0.05)
    during = stalls.totals()
    assert during["stop", "memtables"][0] == 1 and during["stop", "l0_files"][0] == 1
    assert during["stop", "l0_files"][1] >= 0.05  # in progress, already counted
    stalls.resumed()
    after = stalls.totals()
    time.sleep(0.02)
    assert stalls.totals() == after  # over: no longer grows


def test_a_db_with_compactions_held_back_runs_into_debt_and_stalls_then_pays_it() -> None:
    gated = GatedCompactor()
    options = small_options(
        l0_compaction_trigger=2, l0_slowdown_trigger=3, l0_stop_trigger=4, slowdown_sleep_s=0.001
    )
    db = LsmDB(f"memory://debt-{uuid.uuid4().hex}/db", options, compactor=gated)

    def debt() -> dict[str, float]:
        return debt_metrics(db.version, db.o, db.stalls)

    try:
        pending = []
        for t in range(3):  # three L0 tables, flushed one by one
            for i in range(40):
                db.put(key(i), b"%d" % t * 40)
            db.flush()
            assert debt()["l0_files"] == t + 1
            pending.append(debt()["pending_compaction_bytes"])
        level0 = db.version.level_bytes(0)
        assert pending[0] == 0  # below the trigger
        assert 0 < pending[1] < pending[2] == level0  # L0 over its trigger, L1 still empty
        assert len(gated.specs) == 1  # the L0 compaction started and is held back

        done = threading.Event()

        def writer() -> None:
            for i in range(3000):
                db.put(key(i), b"x" * 50)
            done.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_until(lambda: debt()["write_stalls/stop/l0_files"] == 1, what="a stop on L0")
        stopped = debt()
        assert stopped["l0_files"] >= options.l0_stop_trigger
        assert stopped["pending_compaction_bytes"] == db.version.level_bytes(0) > level0
        assert stopped["write_stalls/slowdown/l0_files"] >= 1  # L0 at 3 files first slowed it
        time.sleep(0.2)
        assert debt()["write_stall_seconds/stop/l0_files"] >= 0.2  # counted while it lasts
        assert not done.is_set()

        gated.gate.set()  # compactions run
        thread.join(60)
        assert done.is_set()
        db.wait_idle()
        paid = debt()
        assert paid["l0_files"] < options.l0_compaction_trigger
        assert paid["pending_compaction_bytes"] == 0
        assert paid["write_stalls/stop/l0_files"] >= 1
        time.sleep(0.05)
        assert debt()["write_stall_seconds/stop/l0_files"] == paid[
            "write_stall_seconds/stop/l0_files"
        ]  # no stop in progress any more
    finally:
        gated.gate.set()
        db.close()


def test_the_runtime_reports_each_database_and_keeps_its_stall_counts_after_it_closes(
    tmp_path: Path,
) -> None:
    config = BackendConfig(
        "lsm",
        checkpoint_dir=f"file://{tmp_path}/checkpoints",
        local_dir=str(tmp_path / "local"),
        options={"lsm.memtable_bytes": 4096, "lsm.auto_compact": False, "compaction_mode": "local"},
    )
    backend = create_backend(config, scope="job/3-count/1")
    metrics = JobMetrics()
    metrics.watch(backend, "3-count", 1)
    db = backend.store.db
    for i in range(400):
        db.put(key(i), b"v" * 40)
    db.flush()
    db.stalls.stopped("l0_files")  # a stop of 10 ms, as a writer waiting for L0 would make
    time.sleep(0.01)
    db.stalls.resumed()
    reported = backend.store.metrics()
    (database,) = metrics.databases()
    assert (database.operator, database.subtask) == ("3-count", 1)
    assert database.l0_files == reported["l0_files"] == len(db.version.levels[0]) > 1
    assert database.pending_compaction_bytes == reported["pending_compaction_bytes"] > 0
    assert database.stalls == {
        (kind, cause): (
            reported[f"write_stalls/{kind}/{cause}"],
            reported[f"write_stall_seconds/{kind}/{cause}"],
        )
        for kind, cause in STALLS
    }
    count, seconds = metrics.write_stalls()
    assert count == sum(c for c, _ in database.stalls.values()) >= 1
    assert seconds == sum(s for _, s in database.stalls.values()) >= 0.01

    metrics.retire(backend)  # the backend closes: its counters stay, its gauges go
    backend.store.dispose()
    assert metrics.databases() == []
    assert metrics.write_stalls() == (count, seconds)
    assert "l0_files" not in metrics.retired and "pending_compaction_bytes" not in metrics.retired
