"""Table references with a root and a clip range (docs/lsm-protocol.md, "Table references"):
their effective ranges, their manifest form (old manifests read unchanged), versions, reads,
scans, the table cache, the picker and the compaction function."""

import uuid

import fsspec
import pytest

from statebackend.lsm import reads
from statebackend.lsm.cache import TableCache
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.files import compaction_prefix, table_path
from statebackend.lsm.manifest import Manifest, decode, encode
from statebackend.lsm.meta import TableMeta
from statebackend.lsm.picker import Picker, PickerOptions
from statebackend.lsm.table import TableOptions, write_table
from statebackend.lsm.version import Version, VersionEdit

LEVELS = 4
OPTIONS = TableOptions(block_size=256)


def k(i: int) -> bytes:
    return b"k%04d" % i


def meta(name: str, lo: int, hi: int, **reference: object) -> TableMeta:
    return TableMeta(name, 100, k(lo), k(hi), hi - lo + 1, 0, None, "test", **reference)  # type: ignore[arg-type]


class Roots:
    """Two DB roots on an in-process file system: `own` and `other`."""

    def __init__(self) -> None:
        base = f"memory://refs-{uuid.uuid4().hex}"
        self.own, self.other = f"{base}/own", f"{base}/other"
        self.fs = fsspec.filesystem("memory")

    def table(self, root: str, name: str, keys: range, tag: bytes) -> TableMeta:
        path = table_path(fsspec.core.url_to_fs(root)[1], name)
        rows = [(k(i), b"\x00" + tag + b"%d" % i) for i in keys]
        return write_table(self.fs, path, name, rows, OPTIONS, "test")

    def cache(self) -> TableCache:
        fs, path = fsspec.core.url_to_fs(self.own)
        return TableCache(fs, path, 1 << 20, 0, "/unused")


def value(tag: bytes, i: int) -> bytes:
    return b"\x00" + tag + b"%d" % i


# ----------------------------------------------------------------------------------- metadata


def test_the_effective_range_is_the_files_keys_within_the_clip() -> None:
    whole = meta("t", 10, 50)
    assert (whole.lo, whole.hi) == (k(10), k(50) + b"\x00") and whole.is_whole
    clipped = whole.clipped("memory://a/db", k(20), k(30))
    assert (clipped.root, clipped.clip_start, clipped.clip_end) == ("memory://a/db", k(20), k(30))
    assert (clipped.lo, clipped.hi) == (k(20), k(30)) and not clipped.is_whole
    # A second clip narrows the first; the root stays the file's.
    again = clipped.clipped("memory://b/db", k(25), k(60))
    assert (again.root, again.clip_start, again.clip_end) == ("memory://a/db", k(25), k(30))
    # A bound that does not cut the file's keys is dropped.
    loose = whole.clipped("memory://a/db", k(0), k(99))
    assert loose.clip_start is None and loose.clip_end is None and not loose.is_whole
    assert whole.clipped("memory://a/db", k(60), k(70)).is_empty
    assert whole.clipped("", k(50) + b"\x00", None).is_empty
    assert whole.ref_id == ("", "t", None) and clipped.ref_id == ("memory://a/db", "t", k(20))
    assert clipped.key != whole.key  # the table cache tells roots apart


def test_a_whole_table_is_recorded_as_before_and_old_manifests_read_unchanged() -> None:
    whole = meta("t", 1, 2)
    assert set(whole.to_dict()) == {
        "name", "size", "smallest", "largest", "entries", "tombstones", "min_expiry_ms", "creator",
    }
    clipped = meta("u", 1, 9, root="s3://b/old", clip_start=k(3), clip_end=k(7))
    assert TableMeta.from_dict(clipped.to_dict()) == clipped
    assert TableMeta.from_dict(whole.to_dict()) == whole
    version = Version([[whole], [clipped]], LEVELS)
    m = Manifest(3, 1, "w", version, {1: 3}, 5)
    back = decode(encode(m), "x", LEVELS)
    assert back.version.levels == version.levels
    assert back.version.levels[1][0].root == "s3://b/old"
    # A manifest written before references existed (no root, no clip) decodes to whole tables.
    old = decode(encode(Manifest(4, 1, "w", Version([[whole]], LEVELS), {}, 5)), "x", LEVELS)
    assert old.version.levels[0][0].is_whole and old.version.names() == {"t"}
    with pytest.raises(ValueError, match="must be bytes"):
        TableMeta.from_dict({**whole.to_dict(), "clip_start": "k0003"})


def test_level_invariants_use_effective_ranges() -> None:
    a = meta("t", 0, 99, root="memory://x/db", clip_end=k(50))
    b = meta("t", 0, 99, root="memory://x/db", clip_start=k(50))
    version = Version.empty(LEVELS).apply(VersionEdit(added=((1, b), (1, a))))
    assert version.levels[1] == (a, b)  # one file, twice, with disjoint clips, sorted
    assert version.foreign() == {"memory://x/db": {"t"}} and version.names() == set()
    for lo, hi in ((40, 60), (99, 120)):  # b holds 50..99 of the file: 99 included
        with pytest.raises(ValueError, match="overlap"):
            version.apply(VersionEdit(added=((1, meta("own", lo, hi)),)))
    after = version.apply(VersionEdit(added=((1, meta("own", 100, 120)),)))
    assert [t.name for t in after.levels[1]] == ["t", "t", "own"]
    with pytest.raises(ValueError, match="empty clip"):
        Version([[meta("t", 0, 9, clip_start=k(20))]], LEVELS)
    removed = version.apply(VersionEdit(removed=((1, a),)))
    assert removed.levels[1] == (b,)  # removal by (root, name, clip_start)


def test_reads_and_scans_see_only_keys_inside_each_clip() -> None:
    roots = Roots()
    shared = roots.table(roots.other, "shared.sst", range(100), b"old")
    own = roots.table(roots.own, "own.sst", range(0, 100, 10), b"new")  # 0, 10, ..., 90
    low = shared.clipped(roots.other, k(20), k(40))
    high = shared.clipped(roots.other, k(60), k(80))
    top = shared.clipped(roots.other, k(85), k(90))
    version = Version([[own, top], [low, high]], LEVELS)
    cache = roots.cache()

    def visible(i: int) -> bool:
        return 20 <= i < 40 or 60 <= i < 80 or 85 <= i < 90

    for i in range(100):
        found, got = reads.get(version, k(i), cache)
        if i % 10 == 0:
            assert (found, got) == (True, value(b"new", i))
        elif visible(i):
            assert (found, got) == (True, value(b"old", i))
        else:
            assert not found, i
    want = {
        k(i): value(b"new" if i % 10 == 0 else b"old", i)
        for i in range(100)
        if i % 10 == 0 or visible(i)
    }
    assert dict(reads.entries(version, None, None, cache)) == want
    assert dict(reads.entries(version, k(35), k(65), cache)) == {
        key: v for key, v in want.items() if k(35) <= key < k(65)
    }
    assert len(cache.readers) == 2  # one reader per file, for both references of `shared`


def test_the_table_cache_tells_tables_of_the_same_name_in_two_roots_apart() -> None:
    roots = Roots()
    mine = roots.table(roots.own, "same.sst", range(10), b"mine")
    theirs = roots.table(roots.other, "same.sst", range(10), b"theirs")
    theirs = theirs.clipped(roots.other, None, None)
    cache = roots.cache()
    assert reads.get(Version([[mine]], LEVELS), k(3), cache) == (True, value(b"mine", 3))
    assert reads.get(Version([[theirs]], LEVELS), k(3), cache) == (True, value(b"theirs", 3))
    cache.evict(roots.other, "same.sst")
    assert set(cache.readers) == {"same.sst"}


def test_compaction_reads_each_input_from_its_root_within_its_clip() -> None:
    roots = Roots()
    shared = roots.table(roots.other, "shared.sst", range(100), b"old")
    own = roots.table(roots.own, "own.sst", range(0, 100, 10), b"new")
    spec = CompactionSpec(
        version=SPEC_VERSION,
        compaction_id="0123456789abcdef",
        db_root=roots.own,
        inputs=(
            CompactionInput(0, (own,)),
            CompactionInput(1, (shared.clipped(roots.other, k(20), k(40)),)),
        ),
        output_level=1,
        target_file_size=1 << 20,
        bottommost=True,
        ttl_cutoff_ms=None,
        output_prefix=compaction_prefix(1, "0123456789abcdef"),
        table_options=OPTIONS,
    )
    result = run_compaction(spec)
    (out,) = result.outputs
    assert out.is_whole and roots.fs.exists(table_path(roots.own.split("://")[1], out.name))
    assert not roots.fs.exists(table_path(roots.other.split("://")[1], out.name))
    entries = dict(reads.entries(Version([[out]], LEVELS), None, None, roots.cache()))
    want = {k(i): value(b"new", i) for i in range(0, 100, 10)}
    want |= {k(i): value(b"old", i) for i in range(20, 40) if i % 10}
    assert entries == want
    assert result.stats.input_entries == 10 + 20  # only the clipped keys of `shared` were read


def test_the_picker_uses_effective_ranges_and_rewrites_a_lone_shared_reference() -> None:
    picker = Picker(PickerOptions(num_levels=LEVELS, l0_trigger=1))
    shared = meta("shared", 0, 99, root="memory://x/db", clip_start=k(60))
    l0 = meta("l0", 10, 30)
    version = Version([[l0], [shared]], LEVELS)
    pick = picker.pick(version, set(), [])
    assert pick is not None and pick.trivial_move  # [10, 30] misses shared's [60, 99]
    alone = Version([[], [shared]], LEVELS)
    full = picker.pick_all(alone)
    assert full is not None and full.inputs[0].tables == (shared,)  # rewritten into this root
    assert picker.pick_all(Version([[], [meta("own", 0, 99)]], LEVELS)) is None
