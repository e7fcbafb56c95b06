"""Memtable: O(1) writes, tombstones, point-in-time range copies, lazily sorted key order."""

import random
import uuid

from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from statebackend.lsm.memtable import ENTRY_OVERHEAD, Memtable
from tests.lsm.options import small_options


def test_put_overwrite_and_tombstone() -> None:
    m = Memtable()
    m.put(b"b", b"1")
    m.put(b"a", b"2")
    m.put(b"b", b"3")
    m.put(b"c", None)
    assert m.data == {b"b": b"3", b"a": b"2", b"c": None}
    assert len(m) == 3
    assert m.size == live_size(m)  # the overwritten b"1" no longer counts
    assert m.size == 2 * (1 + 1 + ENTRY_OVERHEAD) + 1 + ENTRY_OVERHEAD


def live_size(m: Memtable) -> int:
    return sum(len(k) + len(v or b"") + ENTRY_OVERHEAD for k, v in m.data.items())


def test_size_counts_live_entries_only_across_overwrites_and_deletes() -> None:
    rng = random.Random(11)
    m = Memtable()
    for _ in range(20000):
        k = b"k%d" % rng.randrange(30)
        m.put(k, None if rng.random() < 0.2 else rng.randbytes(rng.randrange(100)))
    assert len(m) == 30
    assert m.size == live_size(m)


def test_many_overwrites_of_few_keys_do_not_switch_the_memtable() -> None:
    compactor = LocalCompactor(1, processes=False)
    db = LsmDB(
        f"memory://memtable-{uuid.uuid4().hex}/db",
        small_options(memtable_bytes=4096, auto_compact=False),
        compactor=compactor,
    )
    try:
        for i in range(20000):  # 20 keys of ~45 bytes: about 1 KiB live, 900 KiB written
            db.put(b"key-%02d" % (i % 20), b"value-%06d" % i)
        db.flush()  # the one memtable becomes the one table
        (table,) = db.version.levels[0]
        assert table.entries == 20
        assert db.get(b"key-07") == b"value-%06d" % 19987
    finally:
        db.close()
        compactor.close()


def test_range_bounds_and_tombstones() -> None:
    m = Memtable()
    for k in [b"d", b"a", b"c", b"b", b"e"]:
        m.put(k, k * 2)
    m.put(b"c", None)
    assert m.range(b"b", b"e") == [(b"b", b"bb"), (b"c", None), (b"d", b"dd")]
    assert m.range(None, b"b") == [(b"a", b"aa")]
    assert m.range(b"d", None) == [(b"d", b"dd"), (b"e", b"ee")]
    assert m.range(b"x", None) == []
    assert m.batch() == ([b"a", b"b", b"c", b"d", b"e"], [b"aa", b"bb", None, b"dd", b"ee"])


def test_range_is_a_point_in_time_copy() -> None:
    m = Memtable()
    m.put(b"a", b"1")
    snap = m.range(None, None)
    m.put(b"a", b"2")
    m.put(b"b", b"3")
    assert snap == [(b"a", b"1")]
    assert m.range(None, None) == [(b"a", b"2"), (b"b", b"3")]


def test_scans_interleaved_with_writes_match_a_sorted_model() -> None:
    rng = random.Random(7)
    m = Memtable()
    model: dict[bytes, bytes | None] = {}
    for i in range(3000):
        key = rng.randbytes(2)
        value = None if rng.random() < 0.2 else str(i).encode()
        m.put(key, value)
        model[key] = value
        if i % 37 == 0:
            lo, hi = sorted([rng.randbytes(2), rng.randbytes(2)])
            expected = [(k, model[k]) for k in sorted(model) if lo <= k < hi]
            assert m.range(lo, hi) == expected
    keys, values = m.batch()
    assert list(zip(keys, values, strict=True)) == sorted(model.items())
