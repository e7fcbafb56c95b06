"""run_compaction, the pure compaction function, and its spec and result (their wire format,
the compaction service's protobuf messages, is tested in tests/compaction_service/test_proto.py)."""

import posixpath
import random
import re
import uuid
from collections.abc import Iterator

import fsspec
import pytest

from statebackend import ttl
from statebackend.lsm import compaction_job
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.table import (
    CorruptTableError,
    FsFileSource,
    TableMeta,
    TableOptions,
    TableReader,
    write_table,
)

OPTIONS = TableOptions(block_size=512)
Entries = list[tuple[bytes, bytes | None]]


class Db:
    """A DB root on a file system, with helpers to write input tables and read outputs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.tables = posixpath.join(self.root, "tables")

    def table(self, name: str, entries: Entries) -> TableMeta:
        path = posixpath.join(self.tables, name)
        return write_table(self.fs, path, name, sorted(entries), OPTIONS, "flush")

    def read(self, meta: TableMeta) -> Entries:
        path = posixpath.join(self.tables, meta.name)
        reader = TableReader(FsFileSource(self.fs, path), meta.name)
        assert reader.meta == meta
        return list(reader.scan())

    def names(self) -> set[str]:
        if not self.fs.exists(self.tables):
            return set()
        return {posixpath.basename(p) for p in self.fs.ls(self.tables, detail=False)}


@pytest.fixture(params=["memory", "file"])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Db]:  # noqa: ANN001
    if request.param == "memory":
        url = f"memory://compaction-{uuid.uuid4().hex}/db"
        yield Db(url)
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)
    else:
        yield Db(f"file://{tmp_path}/db")


def _spec(db: Db, inputs: list[CompactionInput], **kwargs: object) -> CompactionSpec:
    fields: dict = {
        "version": SPEC_VERSION,
        "compaction_id": "c1",
        "db_root": db.url,
        "inputs": tuple(inputs),
        "output_level": 1,
        "target_file_size": 1 << 20,
        "bottommost": False,
        "ttl_cutoff_ms": None,
        "output_prefix": "000001-",
        "table_options": OPTIONS,
    }
    fields.update(kwargs)
    return CompactionSpec(**fields)


def _outputs(db: Db, result: CompactionResult) -> Entries:
    return [e for meta in result.outputs for e in db.read(meta)]


def _v(s: bytes) -> bytes:
    return ttl.wrap(s, None)


def test_newest_entry_wins_across_l0_runs_and_levels(db: Db) -> None:
    l0_new = db.table("l0-new.sst", [(b"a", _v(b"l0new")), (b"d", None)])
    l0_old = db.table("l0-old.sst", [(b"a", _v(b"l0old")), (b"b", _v(b"l0old")), (b"e", None)])
    l1 = db.table(
        "l1.sst", [(b"a", _v(b"l1")), (b"b", _v(b"l1")), (b"c", _v(b"l1")), (b"d", _v(b"l1"))]
    )
    l2a = db.table("l2a.sst", [(b"c", _v(b"l2")), (b"e", _v(b"l2"))])
    l2b = db.table("l2b.sst", [(b"f", _v(b"l2")), (b"g", _v(b"l2"))])
    spec = _spec(
        db,
        [
            CompactionInput(0, (l0_new, l0_old)),
            CompactionInput(1, (l1,)),
            CompactionInput(2, (l2b, l2a)),  # any order: a level is sorted by key
        ],
        output_level=2,
    )
    result = run_compaction(spec)
    assert _outputs(db, result) == [
        (b"a", _v(b"l0new")),
        (b"b", _v(b"l0old")),
        (b"c", _v(b"l1")),
        (b"d", None),
        (b"e", None),
        (b"f", _v(b"l2")),
        (b"g", _v(b"l2")),
    ]
    stats = result.stats
    assert (stats.input_entries, stats.output_entries) == (13, 7)
    assert (stats.dropped_tombstones, stats.dropped_expired) == (0, 0)
    assert all(meta.creator == "compaction:c1" for meta in result.outputs)


def test_tombstones_are_dropped_only_when_bottommost(db: Db) -> None:
    new = db.table("new.sst", [(b"a", None), (b"b", _v(b"2")), (b"x", None)])
    old = db.table("old.sst", [(b"a", _v(b"1")), (b"c", _v(b"1"))])
    inputs = [CompactionInput(0, (new,)), CompactionInput(1, (old,))]
    kept = run_compaction(_spec(db, inputs, bottommost=False))
    assert _outputs(db, kept) == [(b"a", None), (b"b", _v(b"2")), (b"c", _v(b"1")), (b"x", None)]
    assert sum(m.tombstones for m in kept.outputs) == 2
    dropped = run_compaction(_spec(db, inputs, bottommost=True))
    assert _outputs(db, dropped) == [(b"b", _v(b"2")), (b"c", _v(b"1"))]
    assert dropped.stats.dropped_tombstones == 2
    assert all(m.tombstones == 0 for m in dropped.outputs)


def test_expired_entries_are_dropped(db: Db) -> None:
    entries = [
        (b"a", ttl.wrap(b"old", 1000)),
        (b"b", ttl.wrap(b"edge", 2000)),
        (b"c", ttl.wrap(b"fresh", 2001)),
        (b"d", ttl.wrap(b"forever", None)),
        (b"e", None),
        (b"f", b""),  # not an envelope: never expires
    ]
    shadowed = db.table("old.sst", [(b"a", ttl.wrap(b"older", None)), (b"g", ttl.wrap(b"g", 5))])
    table = db.table("new.sst", entries)
    inputs = [CompactionInput(0, (table,)), CompactionInput(1, (shadowed,))]

    bottom = run_compaction(_spec(db, inputs, bottommost=True, ttl_cutoff_ms=2000))
    assert _outputs(db, bottom) == [entries[2], entries[3], entries[5]]
    assert (bottom.stats.dropped_expired, bottom.stats.dropped_tombstones) == (3, 1)
    assert bottom.outputs[0].min_expiry_ms == 2001

    # Above the bottom an expired value becomes a tombstone: the older b"older" must not reappear.
    upper = run_compaction(_spec(db, inputs, bottommost=False, ttl_cutoff_ms=2000))
    assert _outputs(db, upper) == [
        (b"a", None),
        (b"b", None),
        entries[2],
        entries[3],
        (b"e", None),
        entries[5],
        (b"g", None),
    ]
    assert upper.stats.dropped_expired == 3

    none = run_compaction(_spec(db, inputs, bottommost=True, ttl_cutoff_ms=None))
    assert _outputs(db, none) == [
        (b"a", ttl.wrap(b"old", 1000)),
        entries[1],
        entries[2],
        entries[3],
        entries[5],
        (b"g", ttl.wrap(b"g", 5)),
    ]


def _random_inputs(db: Db, seed: int) -> tuple[list[CompactionInput], Entries]:
    """Three L0 runs over one L1 run of four tables, and the newest entry of every key."""
    rng = random.Random(seed)

    def entries(n: int, tag: bytes) -> dict[bytes, bytes | None]:
        def value() -> bytes | None:
            return None if rng.random() < 0.1 else _v(tag + rng.randbytes(30))

        return {b"%05d" % rng.randrange(20_000): value() for _ in range(n)}

    l1_all = sorted(entries(6000, b"l1").items())
    l1 = tuple(db.table(f"l1-{i}.sst", l1_all[i * 1500 : (i + 1) * 1500]) for i in range(4))
    l0 = [entries(2000, b"l0-%d" % i) for i in range(3)]  # newest first
    l0_tables = tuple(db.table(f"l0-{i}.sst", list(run.items())) for i, run in enumerate(l0))
    expected: dict[bytes, bytes | None] = dict(l1_all)
    for run in reversed(l0):
        expected.update(run)
    return [CompactionInput(0, l0_tables), CompactionInput(1, l1)], sorted(expected.items())


def test_key_range_subcompactions_partition_the_whole(db: Db) -> None:
    inputs, expected = _random_inputs(db, 1)
    whole = run_compaction(_spec(db, inputs))
    assert _outputs(db, whole) == expected
    bounds = [None, b"03000", b"07500", b"07500\x00", b"15000", None]
    parts: Entries = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        result = run_compaction(_spec(db, inputs, key_range=(start, end)))
        part = _outputs(db, result)
        assert all((start is None or k >= start) and (end is None or k < end) for k, _ in part)
        assert result.stats.output_entries == len(part)
        parts += part
    assert parts == expected


def test_outputs_split_at_target_file_size(db: Db) -> None:
    inputs, expected = _random_inputs(db, 2)
    before = db.names()
    spec = _spec(db, inputs, target_file_size=40_000, output_prefix="000042-")
    result = run_compaction(spec)
    assert len(result.outputs) > 3
    assert _outputs(db, result) == expected
    for a, b in zip(result.outputs, result.outputs[1:], strict=False):
        assert a.largest < b.smallest
    for meta in result.outputs[:-1]:
        assert 40_000 <= meta.size <= 40_000 + 8 * OPTIONS.block_size + 4096
    names = [m.name for m in result.outputs]
    token = re.fullmatch(r"000042-([0-9a-f]{16})-0000\.sst", names[0]).group(1)
    assert names == [f"000042-{token}-{i:04d}.sst" for i in range(len(names))]
    assert db.names() == before | set(names)
    assert result.stats.output_bytes == sum(db.fs.size(f"{db.tables}/{n}") for n in names)
    assert result.stats.input_bytes >= sum(t.size for i in inputs for t in i.tables) * 0.9
    again = run_compaction(spec)
    assert not set(m.name for m in again.outputs) & set(names)  # a rerun never collides


def test_a_compaction_that_drops_everything_writes_nothing(db: Db) -> None:
    table = db.table("t.sst", [(b"a", None), (b"b", ttl.wrap(b"x", 1))])
    before = db.names()
    result = run_compaction(
        _spec(db, [CompactionInput(0, (table,))], bottommost=True, ttl_cutoff_ms=10)
    )
    assert result.outputs == ()
    assert result.stats.output_entries == 0
    assert db.names() == before


def test_a_corrupted_input_fails_the_compaction_and_leaves_no_outputs(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed: list[str] = []
    remove = compaction_job.remove_quietly
    monkeypatch.setattr(
        compaction_job, "remove_quietly", lambda fs, path: (removed.append(path), remove(fs, path))
    )
    inputs, _ = _random_inputs(db, 3)
    victim = inputs[1].tables[-1]  # read last: outputs have been written before it fails
    path = f"{db.tables}/{victim.name}"
    data = bytearray(db.fs.cat_file(path))
    data[len(data) // 2] ^= 0x10
    db.fs.pipe_file(path, bytes(data))
    before = db.names()
    with pytest.raises(CorruptTableError, match=victim.name):
        run_compaction(_spec(db, inputs, target_file_size=20_000))
    assert db.names() == before
    assert len(removed) > 2  # finished outputs and the open one were written, then removed


def test_a_missing_input_fails_the_compaction_and_leaves_no_outputs(db: Db) -> None:
    inputs, _ = _random_inputs(db, 4)
    ghost = TableMeta("ghost.sst", 1000, b"99990", b"99999", 5, 0, None, "flush")
    before = db.names()
    with pytest.raises(FileNotFoundError):
        run_compaction(_spec(db, [*inputs, CompactionInput(2, (ghost,))], target_file_size=20_000))
    assert db.names() == before


def test_overlapping_tables_in_one_level_are_rejected(db: Db) -> None:
    a = db.table("a.sst", [(b"a", _v(b"1")), (b"m", _v(b"1"))])
    b = db.table("b.sst", [(b"k", _v(b"1")), (b"z", _v(b"1"))])
    with pytest.raises(ValueError, match="overlap"):
        run_compaction(_spec(db, [CompactionInput(1, (a, b))]))


def test_only_the_named_files_are_read(db: Db) -> None:
    table = db.table("t.sst", [(b"a", _v(b"1"))])
    db.fs.pipe_file(f"{db.tables}/junk.sst", b"not a table")
    result = run_compaction(_spec(db, [CompactionInput(0, (table,))]))
    assert _outputs(db, result) == [(b"a", _v(b"1"))]


def test_stats_measure_time(db: Db) -> None:
    inputs, _ = _random_inputs(db, 5)
    result = run_compaction(_spec(db, inputs), creator="remote:test")
    assert {m.creator for m in result.outputs} == {"remote:test"}
    stats = result.stats
    assert stats.cpu_seconds > 0 and stats.wall_seconds > 0
    assert stats.input_entries == sum(t.entries for i in inputs for t in i.tables)
