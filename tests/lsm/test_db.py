"""LsmDB through its public API: reads and writes across memtables, tables and levels, compaction
picking and install rules, write stalls, checkpoints and restore, caches, the `lsm` backend."""

import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

import pytest

from statebackend.errors import (
    CorruptCheckpointError,
    InvalidHandleError,
    MissingCheckpointDataError,
)
from statebackend.keygroups import KeyGroupRange
from statebackend.lsm.backend import LsmStoreFactory, parse_options
from statebackend.lsm.cache import BlockCache
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, run_compaction
from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from statebackend.lsm.table import CorruptTableError
from statebackend.lsm.version import VersionEdit
from statebackend.store import StoreContext
from statebackend.ttl import wrap
from tests.lsm.options import small_options


@pytest.fixture
def root() -> str:
    return f"memory://lsm-db-{uuid.uuid4().hex}/db"


@pytest.fixture(scope="module")
def compactor():  # noqa: ANN201
    c = LocalCompactor(2, processes=False)
    yield c
    c.close()


def key(i: int) -> bytes:
    return b"k%08d" % i


def open_db(root: str, compactor: LocalCompactor, **kw: Any) -> LsmDB:
    restore = kw.pop("restore_manifest", None)
    fresh = kw.pop("fresh", False)
    return LsmDB(
        root, small_options(**kw), compactor=compactor, restore_manifest=restore, fresh=fresh
    )


def test_reads_see_newest_value_across_all_sources(root: str, compactor: LocalCompactor) -> None:
    db = open_db(root, compactor)
    model = {}
    for rnd in range(6):
        for i in range(0, 400, rnd + 1):
            v = b"v%d-%d" % (rnd, i) * 3
            db.put(key(i), v)
            model[key(i)] = v
        for i in range(rnd, 400, 7):
            db.delete(key(i))
            model.pop(key(i), None)
        if rnd % 2:
            db.flush()
    db.wait_idle()
    assert sum(len(level) for level in db.version.levels[1:]) > 0  # compactions happened
    for i in range(410):
        assert db.get(key(i)) == model.get(key(i))
    assert list(db.scan(None, None)) == sorted(model.items())
    assert list(db.scan(key(100), key(200))) == sorted(
        (k, v) for k, v in model.items() if key(100) <= k < key(200)
    )
    db.close()


def test_scan_is_point_in_time_while_writes_flushes_and_compactions_continue(
    root: str, compactor: LocalCompactor
) -> None:
    db = open_db(root, compactor)
    for i in range(500):
        db.put(key(i), b"old")
    it = db.scan(key(0), key(10**6))
    first = next(it)
    for i in range(500):
        db.put(key(i), b"new-value")
        db.put(key(i + 1000), b"x")
    db.compact()
    db.collect_garbage()  # must not delete tables the open iterator still reads
    rest = list(it)
    assert [first, *rest] == [(key(i), b"old") for i in range(500)]
    assert db.get(key(3)) == b"new-value"
    db.close()


def test_flush_is_durable_and_reopen_resumes(root: str, compactor: LocalCompactor) -> None:
    db = open_db(root, compactor)
    db.put(b"a", b"1")
    db.flush()
    db.put(b"b", b"2")  # not flushed: lost by close, like a crash
    epoch = db.epoch
    db.close()
    db = open_db(root, compactor)
    assert db.epoch == epoch + 1
    assert db.get(b"a") == b"1" and db.get(b"b") is None
    db.close()


def test_leveled_compaction_keeps_levels_sorted_and_bounded(
    root: str, compactor: LocalCompactor
) -> None:
    db = open_db(root, compactor)
    for i in range(6000):
        db.put(key((i * 7919) % 6000), os.urandom(20))
    db.flush()
    db.wait_idle()
    v = db.version
    assert len(v.levels[0]) < 3
    assert v.deepest_nonempty_level() >= 2
    for n in range(1, len(v.levels) - 1):
        assert v.level_bytes(n) <= 16384 * 10 ** (n - 1)
    assert sorted(k for k, _ in db.scan(None, None)) == [key(i) for i in range(6000)]
    assert db.compactions_installed > 0
    db.close()


def test_trivial_move_for_non_overlapping_table(root: str, compactor: LocalCompactor) -> None:
    db = open_db(root, compactor, l0_compaction_trigger=1)
    db.put(b"a", b"1")
    db.flush()
    db.wait_idle()
    v = db.version
    assert not v.levels[0] and [t.creator for t in v.levels[1]] == ["flush"]  # moved, not rewritten
    assert db.compactions_installed == 0
    db.close()


def test_full_compaction_drops_tombstones_and_expired_entries(
    root: str, compactor: LocalCompactor
) -> None:
    db = open_db(root, compactor, auto_compact=False)
    past = time.time_ns() // 1_000_000 - 1000
    future = past + 10**9
    for i in range(200):
        db.put(key(i), wrap(b"p", past if i % 2 else future))
    db.flush()
    for i in range(0, 200, 4):
        db.delete(key(i))
    db.flush()
    assert db.get(key(1)) == wrap(b"p", past)  # the DB itself treats values as opaque
    db.compact()
    v = db.version
    assert not v.levels[0] and all(t.tombstones == 0 for _, t in v.tables())
    assert sum(t.entries for _, t in v.tables()) == 50
    assert db.get(key(1)) is None and db.get(key(0)) is None and db.get(key(2)) is not None
    db.close()


def test_full_compaction_targets_a_level_the_data_fits_in(
    root: str, compactor: LocalCompactor
) -> None:
    db = open_db(root, compactor, auto_compact=False)
    for i in range(3000):
        db.put(key(i), b"v" * 30)
    db.compact()
    v = db.version
    sizes = [v.level_bytes(n) for n in range(len(v.levels))]
    (level,) = [n for n, size in enumerate(sizes) if size]
    assert level == 2 and 16384 < sizes[2] <= 16384 * 10  # too big for L1: one run in L2
    db.close()


class GatedCompactor:
    """Runs compactions in threads, each only once `gate` is set; futures are marked running."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.specs: list[CompactionSpec] = []

    def submit(self, spec: CompactionSpec, so: Mapping[str, Any]) -> "Future[CompactionResult]":
        self.specs.append(spec)
        fut: Future[CompactionResult] = Future()
        fut.set_running_or_notify_cancel()

        def run() -> None:
            self.gate.wait()
            try:
                fut.set_result(run_compaction(spec, so))
            except Exception as e:  # noqa: BLE001
                fut.set_exception(e)

        threading.Thread(target=run, daemon=True).start()
        return fut

    def close(self) -> None:
        self.gate.set()


def table_files(db: LsmDB) -> set[str]:
    return {os.path.basename(p) for p in db.fs.ls(f"{db._root_path}/tables", detail=False)}


def wait_for(cond, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def fill_l0(db: LsmDB, n: int, start: int = 0) -> None:
    for t in range(n):
        for i in range(20):
            db.put(key(i), b"%d" % (start + t))
        db.flush()


def test_writes_stop_at_l0_stop_trigger_until_compaction_catches_up(root: str) -> None:
    gated = GatedCompactor()
    db = LsmDB(
        root,
        small_options(
            l0_compaction_trigger=2,
            l0_slowdown_trigger=3,
            l0_stop_trigger=4,
            slowdown_sleep_s=0.001,
        ),
        compactor=gated,
    )
    fill_l0(db, 4)
    wait_for(lambda: len(gated.specs) == 1)
    done = threading.Event()

    def writer() -> None:
        for i in range(2000):
            db.put(key(i), b"x" * 50)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()  # stopped: L0 is at its stop trigger and the compactor is stuck
    gated.gate.set()
    t.join(10)
    assert done.is_set()
    db.close()


def test_writes_slow_down_at_l0_slowdown_trigger(root: str) -> None:
    gated = GatedCompactor()
    options = small_options(l0_compaction_trigger=2, l0_slowdown_trigger=2, slowdown_sleep_s=0.2)
    db = LsmDB(root, options, compactor=gated)
    fill_l0(db, 2)
    start = time.monotonic()
    while len(db.version.levels[0]) == 2:  # write until a memtable switches and is flushed
        db.put(os.urandom(8), b"x" * 50)
    assert time.monotonic() - start >= 0.2
    gated.gate.set()
    db.close()


def test_cancelled_compaction_is_not_installed_and_its_outputs_are_deleted(root: str) -> None:
    gated = GatedCompactor()
    db = LsmDB(root, small_options(l0_compaction_trigger=2), compactor=gated)
    fill_l0(db, 2)
    wait_for(lambda: len(db.running_compactions()) == 1)
    (cid,) = db.running_compactions()
    assert db.cancel_compaction(cid) and not db.cancel_compaction(cid)
    prefix = gated.specs[0].output_prefix
    gated.gate.set()
    db.wait_idle()
    wait_for(lambda: db.abandoned_compactions() == 0)
    # the picker scheduled the same work again; only that second run was installed
    assert len(gated.specs) == 2 and db.compactions_installed == 1
    assert not [n for n in table_files(db) if n.startswith(prefix)]  # written, then deleted
    assert db.get(key(0)) == b"1"
    db.close()


def test_timed_out_compaction_is_abandoned_and_its_outputs_deleted(root: str) -> None:
    gated = GatedCompactor()
    db = LsmDB(
        root, small_options(l0_compaction_trigger=2, compaction_timeout_s=0.05), compactor=gated
    )
    fill_l0(db, 2)
    wait_for(lambda: len(gated.specs) >= 2)  # the first timed out; the picker retried
    gated.gate.set()
    db.wait_idle()
    wait_for(lambda: db.abandoned_compactions() == 0)
    installed = {t.creator.split(":")[1] for _, t in db.version.tables()} - {"flush"}
    abandoned = [s for s in gated.specs if s.compaction_id not in installed]
    assert abandoned and len(installed) == 1
    files = table_files(db)
    assert not [n for s in abandoned for n in files if n.startswith(s.output_prefix)]
    assert db.get(key(0)) == b"1"
    db.close()


def test_compaction_with_stale_inputs_is_discarded(root: str) -> None:
    gated = GatedCompactor()
    db = LsmDB(root, small_options(l0_compaction_trigger=2, max_compactions=1), compactor=gated)
    fill_l0(db, 2)
    wait_for(lambda: len(gated.specs) == 1)
    # Invalidate the inputs with an edit through the same path a concurrent install would take.
    oldest = db.version.levels[0][-1]
    db._commit(VersionEdit(removed=((0, oldest),), added=((1, oldest),)))
    prefix = gated.specs[0].output_prefix
    gated.gate.set()
    wait_for(lambda: db.running_compactions() == [])
    wait_for(lambda: not [n for n in table_files(db) if n.startswith(prefix)])  # outputs deleted
    assert [t.creator for _, t in db.version.tables()] == ["flush", "flush"]  # nothing installed
    assert db.get(key(0)) == b"1"
    db.close()


def test_checkpoint_pins_a_version_and_restore_opens_it(
    root: str, compactor: LocalCompactor
) -> None:
    db = open_db(root, compactor)
    for i in range(300):
        db.put(key(i), b"one")
    ref = db.checkpoint(1)
    assert db.pins == {1: int(os.path.basename(ref.path).split(".")[0])}
    for i in range(300):
        db.put(key(i), b"two")
    db.delete(key(5))
    db.compact()
    db.collect_garbage()
    db.checkpoint(2)
    db.close()

    number = int(os.path.basename(ref.path).split(".")[0])
    db = open_db(root, compactor, restore_manifest=number)
    assert db.get(key(5)) == b"one" and db.get(key(299)) == b"one"
    assert db.pins.keys() == {1, 2}  # restoring keeps the other retained checkpoints
    db.release_checkpoint(1)
    db.release_checkpoint(2)
    db.compact()
    for _ in range(db.o.manifest_retention):
        db.checkpoint(3)  # age the older manifests out of the retention window
    db.collect_garbage()
    assert table_files(db) == db.version.names()
    db.close()
    with pytest.raises(MissingCheckpointDataError):
        open_db(root, compactor, restore_manifest=number)


def test_fresh_open_is_empty_but_keeps_pins(root: str, compactor: LocalCompactor) -> None:
    db = open_db(root, compactor)
    db.put(b"a", b"1")
    db.checkpoint(7)
    db.close()
    db = open_db(root, compactor, fresh=True)
    assert db.get(b"a") is None and list(db.scan(None, None)) == []
    assert 7 in db.pins
    db.close()


def test_block_cache_counts_and_evicts() -> None:
    c = BlockCache(100)
    assert c.get(("t", 0)) is None
    c.put(("t", 0), "a", 60)
    c.put(("t", 1), "b", 30)
    assert c.get(("t", 0)) == "a"
    c.put(("u", 0), "c", 30)  # evicts ("t", 1), the least recently used
    assert c.get(("t", 1)) is None and c.get(("u", 0)) == "c"
    assert (c.hits, c.misses, c.used) == (2, 2, 90)
    c.put(("big", 0), "x", 101)  # larger than the cache: not stored
    assert c.get(("big", 0)) is None
    c.discard_table("t")
    assert c.used == 30


@pytest.mark.parametrize(
    "block_cache,file_cache", [(0, 0), (1 << 20, 0), (0, 1 << 20), (1 << 20, 12000)]
)
def test_reads_work_with_any_cache_configuration(
    root: str,
    compactor: LocalCompactor,
    tmp_path,
    block_cache: int,
    file_cache: int,  # noqa: ANN001
) -> None:
    db = open_db(
        root,
        compactor,
        block_cache_bytes=block_cache,
        file_cache_bytes=file_cache,
        local_dir=str(tmp_path),
    )
    for i in range(1000):
        db.put(key(i), b"v%d" % i)
    db.flush()
    db.wait_idle()
    for _ in range(2):
        assert all(db.get(key(i)) == b"v%d" % i for i in range(0, 1000, 3))
    assert len(list(db.scan(key(10), key(20)))) == 10
    s = db.cache_stats()
    if block_cache:
        assert s.block_hits > 0 and s.block_misses > 0 and 0 < s.block_bytes <= block_cache
    if file_cache:
        assert s.file_hits > 0 and s.file_misses > 0 and 0 < s.file_bytes <= file_cache
        assert any(tmp_path.rglob("*.sst"))
    db.close()
    assert not any(tmp_path.rglob("*.sst"))  # close removes the local cache


def test_corrupt_table_raises_through_get_and_scan(root: str, compactor: LocalCompactor) -> None:
    db = open_db(root, compactor, block_cache_bytes=0, auto_compact=False, memtable_bytes=1 << 20)
    for i in range(500):
        db.put(key(i), b"value-%d" % i)
    db.flush()
    (t,) = db.version.levels[0]
    path = f"{db._root_path}/tables/{t.name}"
    data = bytearray(db.fs.cat_file(path))
    data[100] ^= 0x01  # inside the first data block
    db.fs.pipe_file(path, bytes(data))
    with pytest.raises(CorruptTableError, match=t.name):
        db.get(key(0))
    with pytest.raises(CorruptTableError):
        list(db.scan(None, None))
    db.close()


def test_process_compactor_on_file_root(tmp_path) -> None:  # noqa: ANN001
    db = LsmDB(f"file://{tmp_path}/db", small_options(l0_compaction_trigger=2))
    assert isinstance(db.compactor, LocalCompactor) and db.compactor.processes
    fill_l0(db, 3)
    db.wait_idle(timeout=60)
    assert db.compactions_installed >= 1
    assert db.get(key(3)) == b"2"
    db.close()


def context(tmp_path, options: Mapping[str, Any] | None = None) -> StoreContext:  # noqa: ANN001
    return StoreContext(
        scope="job/op/0",
        key_group_range=KeyGroupRange(0, 63),
        checkpoint_dir=f"memory://ckpt-{uuid.uuid4().hex}",
        local_dir=str(tmp_path / "local"),
        options={
            "lsm.memtable_bytes": "4096",
            "lsm.block_size": 512,
            "lsm.gc_grace_s": 0,
            **(options or {}),
        },
    )


def test_backend_snapshot_restore_and_bad_handles(tmp_path) -> None:  # noqa: ANN001
    factory = LsmStoreFactory(LocalCompactor(1, processes=False))
    ctx = context(tmp_path)
    store = factory.open(ctx, None)
    for i in range(200):
        store.put(key(i), b"a")
    handles = [store.snapshot(1)]
    store.delete(key(0))
    handles.append(store.snapshot(2))
    store.put(key(1), b"b")
    handles.append(store.snapshot(3))
    assert sorted(store.db.pins) == [1, 2, 3]
    store.release(handles[0], handles[1:])
    store.release(handles[0], handles[1:])  # idempotent
    assert sorted(store.db.pins) == [2, 3]  # a released checkpoint is unpinned
    assert handles[2]["db_root"] == f"{ctx.checkpoint_dir}/job/op/0/db"
    store.dispose()
    assert not (tmp_path / "local" / "job/op/0").exists()

    restored = factory.open(ctx, handles[1])
    assert restored.get(key(0)) is None and restored.get(key(1)) == b"a"
    assert list(restored.scan(key(0), key(3))) == [(key(1), b"a"), (key(2), b"a")]
    restored.dispose()

    bad = dict(handles[2], manifest=dict(handles[2]["manifest"], checksum="0" * 16))
    with pytest.raises(CorruptCheckpointError):
        factory.open(ctx, bad)
    missing = dict(
        handles[2],
        manifest=dict(
            handles[2]["manifest"], path=handles[2]["manifest"]["path"].replace("0000", "9999", 1)
        ),
    )
    with pytest.raises(MissingCheckpointDataError):
        factory.open(ctx, missing)
    for malformed in [
        {},
        {"backend": "rocksdb"},
        dict(handles[2], manifest="x"),
        dict(handles[2], key_groups=[0, 1]),
    ]:
        with pytest.raises(InvalidHandleError):
            factory.open(ctx, malformed)
    factory.compactor.close()


def test_parse_options() -> None:
    o = parse_options(
        {
            "memtable_bytes": "1024",
            "auto_compact": "false",
            "compression": "none",
            "gc_grace_s": "1.5",
            "local_dir": "/x",
        }
    )
    assert (o.memtable_bytes, o.auto_compact, o.table.compression, o.gc_grace_s, o.local_dir) == (
        1024,
        False,
        "none",
        1.5,
        "/x",
    )
    with pytest.raises(ValueError, match="unknown LSM option lsm.nope"):
        parse_options({"nope": 1})
    with pytest.raises(ValueError, match="cannot use"):
        parse_options({"memtable_bytes": "lots"})


def test_backend_metrics_count_local_compactions(tmp_path) -> None:  # noqa: ANN001
    factory = LsmStoreFactory(LocalCompactor(1, processes=False))
    store = factory.open(context(tmp_path), None)
    assert store.metrics()["compactions_local"] == 0
    for i in range(2000):
        store.put(key(i), b"v" * 20)
    store.db.flush()
    store.db.compact()
    metrics = store.metrics()
    assert metrics["compactions_local"] >= 1
    assert metrics["compactions_remote"] == 0
    assert metrics["compaction_cpu_seconds_local"] > 0
    store.dispose()
    factory.compactor.close()
