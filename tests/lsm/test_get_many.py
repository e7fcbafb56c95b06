"""Reading many keys at once (`LsmDB.get_many`, `LsmStore.prefetch`): the same answers as `get`,
the blocks of many keys read concurrently on a slow file system, and a store serving what it read
ahead until it is written; and write stalls put off for an owner that awaits them."""

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statebackend import BackendConfig, ListStateDescriptor, ValueStateDescriptor, create_backend
from statebackend.keygroups import KeyGroupRange
from statebackend.lsm import reads
from statebackend.lsm.backend import LsmStore
from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from statebackend.store import StoreContext
from tests.lsm.options import small_options
from tests.lsm.test_db import GatedCompactor, fill_l0, wait_for
from tests.support.delay_proxy import DelayProxy
from tests.support.fixtures import S3Bucket
from tests.support.s3_server import S3Server
from tests.support.slow_fs import READ_DELAY_S, SlowMemoryFileSystem

NO_AUTO_COMPACTION = dict(l0_compaction_trigger=100, l0_slowdown_trigger=200, l0_stop_trigger=300)


@pytest.fixture
def compactor() -> Iterator[LocalCompactor]:
    c = LocalCompactor(2, processes=False)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def fast_reads() -> Iterator[None]:
    SlowMemoryFileSystem.reset()
    yield
    SlowMemoryFileSystem.reset()


def key(i: int) -> bytes:
    return b"k%08d" % i


def filled_db(root: str, compactor: LocalCompactor, **options: Any) -> tuple[LsmDB, dict]:
    """A DB with tables on several levels, overwrites and tombstones; and its model."""
    # L0 compacted by hand only: tables stay on L0 and below.
    db = LsmDB(root, small_options(**{**NO_AUTO_COMPACTION, **options}), compactor=compactor)
    model: dict[bytes, bytes | None] = {}
    rng = random.Random(7)
    for round_ in range(5):
        for i in rng.sample(range(600), 300):
            if rng.random() < 0.15:
                db.delete(key(i))
                model[key(i)] = None
            else:
                value = b"v%d-%d" % (round_, i) * 8
                db.put(key(i), value)
                model[key(i)] = value
        db.flush()
        if round_ == 2:
            db.compact()
    db.wait_idle()
    return db, model


def test_get_many_finds_what_get_finds(compactor: LocalCompactor) -> None:
    db, model = filled_db(f"memory://get-many-{uuid.uuid4().hex}/db", compactor)
    try:
        assert len(db.version.levels[0]) > 0 and any(db.version.levels[1:])
        db.put(key(5), b"in the memtable")
        model[key(5)] = b"in the memtable"
        keys = [key(i) for i in range(-5, 620)]  # absent keys below and above too
        assert db.get_many(keys) == {k: db.get(k) for k in keys}
        assert db.get_many(keys) == {k: model.get(k) for k in keys}
    finally:
        db.close()


def test_get_many_reads_the_blocks_of_many_keys_concurrently(compactor: LocalCompactor) -> None:
    db, model = filled_db(
        f"slowmem://get-many-{uuid.uuid4().hex}/db", compactor, block_cache_bytes=0
    )
    try:
        keys = [key(i) for i in range(0, 600, 7)]
        for k in keys[:3]:
            db.get(k)  # open the tables (their tails), so only data blocks are read below
        SlowMemoryFileSystem.reset(slow=True)
        started = time.monotonic()
        found = db.get_many(keys)
        elapsed = time.monotonic() - started
        assert found == {k: model.get(k) for k in keys}
        reads = SlowMemoryFileSystem.reads
        assert reads > 20
        assert SlowMemoryFileSystem.max_in_flight > 4
        # one by one they would take reads * READ_DELAY_S
        assert elapsed < reads * READ_DELAY_S / 3, (elapsed, reads)
    finally:
        db.close()


def test_a_store_serves_what_it_read_ahead_until_a_key_is_written(
    compactor: LocalCompactor,
) -> None:
    db, model = filled_db(f"slowmem://prefetch-{uuid.uuid4().hex}/db", compactor)
    context = StoreContext("op/0", KeyGroupRange(0, 127), "memory://unused", "/tmp")
    store = LsmStore(db, context, "/tmp/unused-local")
    try:
        keys = [key(i) for i in range(0, 600, 5)]
        store.prefetch(keys, max_bytes=1 << 20)
        SlowMemoryFileSystem.reset(slow=True)
        db._tables.readers.clear()  # a read that is not served ahead would open tables again
        assert [store.get(k) for k in keys] == [model.get(k) for k in keys]
        assert SlowMemoryFileSystem.reads == 0
        store.put(keys[0], b"new")
        store.delete(keys[1])
        assert store.get(keys[0]) == b"new" and store.get(keys[1]) is None
        # A bound of a few bytes holds (almost) nothing: reads go to the DB again.
        store.prefetch(keys, max_bytes=10)
        assert [store.get(k) for k in keys[2:]] == [model.get(k) for k in keys[2:]]
        assert SlowMemoryFileSystem.reads > 0
    finally:
        db.close()


def test_deferred_write_stalls_grow_the_memtable_until_the_owner_waits() -> None:
    gated = GatedCompactor()  # compactions wait for its gate: L0 stays at its stop trigger
    db = LsmDB(
        f"memory://stalls-{uuid.uuid4().hex}/db",
        small_options(l0_compaction_trigger=2, l0_slowdown_trigger=3, l0_stop_trigger=4),
        compactor=gated,
    )
    try:
        db.defer_stalls()
        fill_l0(db, 4)
        wait_for(lambda: len(gated.specs) == 1)
        assert not db.writes_stalled()

        def write() -> None:  # would stop (as in test_db): put off instead, never waits
            for i in range(2000):
                db.put(key(i), b"x" * 50)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(30)
        assert not writer.is_alive(), "a write waited for the stall"
        assert db.writes_stalled()
        assert db._mem.size > 10 * db.o.memtable_bytes
        assert db.get(key(1999)) == b"x" * 50
        waiter = threading.Thread(target=db.wait_writable, daemon=True)
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive()  # the owner's thread waits the stop out
        gated.gate.set()
        waiter.join(30)
        assert not waiter.is_alive() and not db.writes_stalled()
    finally:
        gated.gate.set()
        db.close()


def _db_behind_a_delay_proxy(
    proxy: DelayProxy, s3_bucket: S3Bucket, name: str, compactor: LocalCompactor, **options: Any
) -> LsmDB:
    storage = s3_bucket.storage_options
    storage["client_kwargs"] = {**storage["client_kwargs"], "endpoint_url": proxy.endpoint_url}
    return LsmDB(
        s3_bucket.path(name),
        small_options(block_cache_bytes=0, **{**NO_AUTO_COMPACTION, **options}),
        storage_options=storage,
        compactor=compactor,
    )


def test_get_many_on_an_object_store_reads_distant_blocks_concurrently(
    compactor: LocalCompactor, s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    with DelayProxy(s3_server.endpoint_url, delay_ms=20) as proxy:
        # One table of 1 KB incompressible entries in 512-byte blocks: every 80th key is ~80 KB
        # from the next, farther than reads are coalesced over, so each is a request of its own.
        big_memtable = 8 << 20
        db = _db_behind_a_delay_proxy(
            proxy, s3_bucket, "distant", compactor, memtable_bytes=big_memtable
        )
        try:
            model = {key(i): random.Random(i).randbytes(1000) for i in range(2000)}
            for k, v in model.items():
                db.put(k, v)
            db.flush()
            assert len(db.version.levels[0]) == 1
            keys = [key(i) for i in range(0, 2000, 80)]
            assert db.get(keys[0]) == model[keys[0]]  # opens the table: only data blocks below
            proxy.reset_stats()
            assert db.get_many(keys) == {k: model[k] for k in keys}
            stats = proxy.stats()
            assert stats["reads"] >= len(keys) - 1
            assert stats["max_in_flight"] > 4
        finally:
            db.close()


def test_get_many_on_an_object_store_coalesces_nearby_blocks_into_one_request_per_table(
    compactor: LocalCompactor, s3_server: S3Server, s3_bucket: S3Bucket
) -> None:
    with DelayProxy(s3_server.endpoint_url, delay_ms=20) as proxy:
        db = _db_behind_a_delay_proxy(
            proxy, s3_bucket, "nearby", compactor, memtable_bytes=16384
        )
        try:
            model = {key(i): random.Random(i).randbytes(100) for i in range(400)}
            for k, v in model.items():
                db.put(k, v)
            db.flush()
            tables = sum(len(level) for level in db.version.levels)
            keys = [key(i) for i in range(0, 420, 3)]
            for k in keys:
                db.get(k)  # opens the tables: only data blocks are read below
            proxy.reset_stats()
            assert db.get_many(keys) == {k: model.get(k) for k in keys}
            blocks_wanted = len(keys) * 100 // 512  # at least: the keys' entries, 512-byte blocks
            assert 2 * tables < blocks_wanted
            assert proxy.stats()["reads"] <= tables
        finally:
            db.close()


def test_coalesce_merges_ranges_across_small_gaps_up_to_a_size() -> None:
    gap, most = reads.COALESCE_GAP_BYTES, reads.COALESCE_MAX_BYTES
    assert reads.coalesce([]) == []
    # Out of order in, by offset out; overlapping and adjacent ranges join; a gap too wide splits.
    spans = [(1000, 100, 2), (0, 100, 0), (100, 50, 1), (1000 + 100 + gap + 1, 10, 3)]
    assert reads.coalesce(spans) == [(0, [0, 1, 2]), (1100 + gap + 1, [3])]
    # A request never grows beyond COALESCE_MAX_BYTES (a range larger than that stays whole).
    blocks = [(i * 4096, 4096, i) for i in range(2 * most // 4096)]
    requests = reads.coalesce(blocks)
    assert len(requests) == 2 and requests[1][0] == most
    assert reads.coalesce([(0, 2 * most, 0), (2 * most, 10, 1)]) == [(0, [0]), (2 * most, [1])]


def test_a_backend_reads_ahead_the_states_used_in_the_default_namespace_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[list[bytes]] = []
    real = LsmStore.prefetch

    def prefetch(store: LsmStore, keys: list[bytes], max_bytes: int) -> None:
        asked.append(keys)
        real(store, keys, max_bytes)

    monkeypatch.setattr(LsmStore, "prefetch", prefetch)
    config = BackendConfig(
        "lsm", f"memory://ahead-{uuid.uuid4().hex}", str(tmp_path), cache_bytes=0
    )
    backend = create_backend(config, scope="op/0")
    try:
        plain = backend.get_state(ValueStateDescriptor("plain"))
        windowed = backend.get_state(ListStateDescriptor("windowed"))
        backend.prefetch(["a", "b"], 1 << 20)
        assert len(asked) == 1 and len(asked[0]) == 4  # both states, both keys
        backend.set_current_key("a")
        windowed.set_namespace((0, 10))  # used in a window's namespace: not read ahead
        windowed.add(1)
        plain.update(1)
        backend.prefetch(["a", "b"], 1 << 20)
        assert len(asked[1]) == 2 and asked[1] == [backend.key_prefix("plain"), asked[1][1]]
    finally:
        backend.dispose()


@pytest.mark.parametrize(
    ("scheme", "reads_ahead"), [("file", False), ("memory", True), ("slowmem", True)]
)
def test_a_store_reads_ahead_only_when_its_tables_are_not_on_a_local_disk(
    tmp_path: Path, scheme: str, reads_ahead: bool
) -> None:
    where = (
        f"file://{tmp_path}/state" if scheme == "file" else f"{scheme}://ahead-{uuid.uuid4().hex}"
    )
    backend = create_backend(BackendConfig("lsm", where, str(tmp_path / "local")), scope="op/0")
    try:
        assert backend.kv_store.reads_ahead is reads_ahead
    finally:
        backend.dispose()
