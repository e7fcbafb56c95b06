"""`statebackend.lsm.files`: names round-trip through the parsers, names never collide, the
protected predicate, deletion by prefix, and `validate_result` refusing each kind of bad result."""

import math
import uuid
from collections.abc import Callable
from dataclasses import replace

import fsspec
import pytest

from statebackend.lsm import files
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.table import TableOptions, write_table

OPTIONS = TableOptions(block_size=512, compression="none")


# ----------------------------------------------------------------------------------- names


@pytest.mark.parametrize("epoch", [1, 42, 999_999, 1_234_567])
def test_flush_names_round_trip(epoch: int) -> None:
    name = files.flush_table_name(epoch, 17)
    assert files.parse_table_name(name) == files.TableName(files.FLUSH, epoch, 17)


def test_compaction_output_names_round_trip() -> None:
    cid = files.new_compaction_id()
    prefix = files.compaction_prefix(7, cid)
    name = files.compaction_output_name(prefix, files.new_output_token(), 3)
    assert files.parse_table_name(name) == files.TableName(files.COMPACTION, 7, 3, cid)
    assert files.is_output_of(prefix, name)


def test_service_run_output_names_round_trip() -> None:
    cid = files.new_compaction_id()
    prefix = files.compaction_prefix(12, cid)
    run = files.new_run_token()
    name = files.compaction_output_name(
        files.service_run_prefix(prefix, run, 11), files.new_output_token(), 0
    )
    parsed = files.parse_table_name(name)
    assert parsed == files.TableName(files.COMPACTION, 12, 0, cid, run, 11)
    assert files.is_output_of(prefix, name)  # a run's outputs are the compaction's outputs


@pytest.mark.parametrize(
    "name",
    [
        "orphan.sst",
        "000001-ctest-x.sst",  # a test's prefix: not a name this module builds
        "000001-f000001-XYZXYZXYZXYZ.sst",
        "000001-f000001-0123456789ab.sst.part",
        "00001-f000001-0123456789ab.sst",  # epoch of 5 digits
        "000001-c0123456789abcdef-0123456789abcdef-1.sst",  # output number of 1 digit
        "000001-c0123456789abcdef-0123456789abcdef-0001.manifest",
    ],
)
def test_other_names_do_not_parse(name: str) -> None:
    assert files.parse_table_name(name) is None


def test_manifest_names_round_trip() -> None:
    for number in (0, 1, 123_456_789_012):
        name = files.manifest_name(number)
        assert files.parse_manifest_name(name) == number
    for name in ("1.manifest", "0000000000001.manifest", "000000000001.sst", "x.manifest"):
        assert files.parse_manifest_name(name) is None


def test_pin_names_round_trip() -> None:
    root = "s3://bucket/job/op/0/db"
    root_id = files.root_id(root)
    assert root_id == files.root_id(root + "/") and len(root_id) == 32
    assert files.root_id("s3://bucket/job/op/1/db") != root_id
    ref = files.reference_pin_name(root, 7)
    assert files.parse_pin_name(ref) == files.PinName(files.REFERENCE, root_id=root_id, number=7)
    holds = files.holds_record_name(root)
    assert files.parse_pin_name(holds) == files.PinName(files.HOLDS, root_id=root_id)
    token = files.new_savepoint_token()
    assert files.parse_pin_name(files.savepoint_pin_name(token)) == files.PinName(
        files.SAVEPOINT, token=token
    )
    assert files.savepoint_manifest_name(token) == f"lsm-{token}.manifest"
    assert files.parse_pin_name(files.released_marker_name(42)) == files.PinName(
        files.RELEASED, number=42
    )
    assert files.parse_pin_name(files.retired_marker_name(3)) == files.PinName(
        files.RETIRED, number=3
    )
    for name in ("ref-x-000001.pin", "savepoint-abc.pin", "retired-1.pin", "released-.pin",
                 ref + ".part", "holds-" + root_id + ".manifest"):
        assert files.parse_pin_name(name) is None


def test_adopting_roots_belong_to_their_base() -> None:
    base = "file:///ckpt/job/op/0/db"
    adopting = files.new_adopting_root(base)
    assert adopting != files.new_adopting_root(base)
    assert files.is_root_of(base, adopting) and files.is_root_of(base, base + "/")
    for other in ("file:///ckpt/job/op/1/db", base + "-x", base + "x", base + "/tables",
                  files.new_adopting_root("file:///ckpt/job/op/1/db"), adopting + "-" + "0" * 32):
        assert not files.is_root_of(base, other)


def test_layout() -> None:
    assert files.table_path("s3://b/db/", "t.sst") == "s3://b/db/tables/t.sst"
    assert files.tables_dir("/x/db") == "/x/db/tables"
    assert files.pin_path("/x/db/", "p.pin") == "/x/db/pins/p.pin"
    assert files.table_label("", "t.sst") == "t.sst"
    assert files.table_label("s3://b/db", "t.sst") == "s3://b/db/tables/t.sst"
    assert files.manifest_path("/x/db", 5) == "/x/db/manifest/000000000005.manifest"
    assert files.manifest_dir("memory://a/db") == "memory://a/db/manifest"


def test_names_never_repeat_for_the_same_epoch_and_number() -> None:
    assert len({files.flush_table_name(1, 1) for _ in range(1000)}) == 1000
    assert len({files.new_compaction_id() for _ in range(1000)}) == 1000
    assert len({files.new_output_token() for _ in range(1000)}) == 1000


def test_prefixes_are_prefix_free() -> None:
    """Deleting or protecting one compaction's (or run's) prefix never reaches another's files."""
    a = files.compaction_prefix(1, files.new_compaction_id())
    b = files.compaction_prefix(1, files.new_compaction_id())
    big = files.compaction_prefix(1_000_000, files.new_compaction_id())
    flush = files.flush_table_name(1, 1)
    for p, q in [(a, b), (a, big), (b, big)]:
        assert not p.startswith(q) and not q.startswith(p)
    assert not flush.startswith((a, b, big))
    run = files.new_run_token()
    piece1, piece10 = (files.service_run_prefix(a, run, i) for i in (1, 10))
    assert not piece10.startswith(piece1) and piece1.startswith(a) and piece10.startswith(a)


def test_the_protected_predicate() -> None:
    prefix = files.compaction_prefix(3, files.new_compaction_id())
    output = files.compaction_output_name(prefix, files.new_output_token(), 0)
    flushing = files.flush_table_name(3, 9)
    assert files.is_protected(output, (prefix,))
    assert files.is_protected(flushing, (prefix, flushing))
    assert not files.is_protected(flushing, (prefix,))
    assert not files.is_protected(output, ())


def test_names_of_a_newer_epoch() -> None:
    assert files.written_by_newer_epoch(files.flush_table_name(5, 1), 4)
    prefix = files.compaction_prefix(5, files.new_compaction_id())
    assert files.written_by_newer_epoch(files.compaction_output_name(prefix, "0" * 16, 0), 4)
    assert not files.written_by_newer_epoch(files.flush_table_name(5, 1), 5)
    assert not files.written_by_newer_epoch("999999-orphan.sst", 1)  # not a name built here


@pytest.mark.parametrize("name", ["a.sst", "000001-c", "x y"])
def test_plain_names(name: str) -> None:
    assert files.is_plain_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x00b"])
def test_names_that_are_not_plain(name: str) -> None:
    assert not files.is_plain_name(name)


# ----------------------------------------------------------------------------------- deletion


def test_delete_outputs_deletes_exactly_the_prefix() -> None:
    fs = fsspec.filesystem("memory")
    root = f"/files-{uuid.uuid4().hex}"
    mine = files.compaction_prefix(1, files.new_compaction_id())
    other = files.compaction_prefix(1, files.new_compaction_id())
    run0 = files.service_run_prefix(mine, files.new_run_token(), 0)
    run1 = files.service_run_prefix(mine, files.new_run_token(), 1)
    names = {
        "local": files.compaction_output_name(mine, files.new_output_token(), 0),
        "run0": files.compaction_output_name(run0, files.new_output_token(), 0),
        "run1": files.compaction_output_name(run1, files.new_output_token(), 0),
        "other": files.compaction_output_name(other, files.new_output_token(), 0),
        "flush": files.flush_table_name(1, 1),
        "foreign": "someone-else.sst",
    }
    for name in names.values():
        fs.pipe_file(files.table_path(root, name), b"x")

    assert files.delete_outputs(fs, root, run0) == [names["run0"]]
    assert sorted(files.delete_outputs(fs, root, mine)) == sorted([names["local"], names["run1"]])
    left = {names[k] for k in ("other", "flush", "foreign")}
    assert set(files.list_tables(fs, root)) == left
    assert files.delete_outputs(fs, f"/files-{uuid.uuid4().hex}", mine) == []  # no folder


@pytest.mark.parametrize("prefix", ["", "..", "a/b"])
def test_delete_outputs_refuses_a_prefix_that_is_not_a_plain_name(prefix: str) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/files-{uuid.uuid4().hex}"
    fs.pipe_file(files.table_path(root, "t.sst"), b"x")
    with pytest.raises(ValueError, match="not a plain file name"):
        files.delete_outputs(fs, root, prefix)
    assert files.list_tables(fs, root) == ["t.sst"]


def test_delete_table_says_whether_it_deleted() -> None:
    fs = fsspec.filesystem("memory")
    root = f"/files-{uuid.uuid4().hex}"
    fs.pipe_file(files.table_path(root, "t.sst"), b"x")
    assert files.delete_table(fs, root, "t.sst")
    assert not files.delete_table(fs, root, "t.sst")


# ----------------------------------------------------------------------------------- results


@pytest.fixture
def compacted() -> tuple[CompactionSpec, CompactionResult]:
    """A real compaction of two overlapping tables into several outputs."""
    root = f"memory://files-{uuid.uuid4().hex}/db"
    fs, path = fsspec.core.url_to_fs(root)
    inputs = []
    for n in range(2):
        rows = [(b"k%05d" % i, b"\x00v%d" % n) for i in range(n * 100, 400 + n * 100)]
        name = f"in{n}.sst"
        inputs.append(write_table(fs, files.table_path(path, name), name, rows, OPTIONS, "test"))
    spec = CompactionSpec(
        version=SPEC_VERSION,
        compaction_id=files.new_compaction_id(),
        db_root=root,
        inputs=(CompactionInput(0, tuple(inputs)),),
        output_level=1,
        target_file_size=2048,
        bottommost=True,
        ttl_cutoff_ms=None,
        output_prefix=files.compaction_prefix(1, "0123456789abcdef"),
        table_options=OPTIONS,
    )
    result = run_compaction(spec)
    assert len(result.outputs) >= 3
    return spec, result


def _with_output(result: CompactionResult, i: int, **changes: object) -> CompactionResult:
    outputs = list(result.outputs)
    outputs[i] = replace(outputs[i], **changes)  # type: ignore[arg-type]
    return replace(result, outputs=tuple(outputs))


def test_a_real_result_is_valid(compacted: tuple[CompactionSpec, CompactionResult]) -> None:
    spec, result = compacted
    files.validate_result(spec, result)
    nothing = replace(result.stats, output_entries=0, output_bytes=0)
    files.validate_result(spec, replace(result, outputs=(), stats=nothing))  # all dropped


def test_a_service_run_result_is_valid(compacted: tuple[CompactionSpec, CompactionResult]) -> None:
    spec, _ = compacted
    run = replace(spec, output_prefix=files.service_run_prefix(spec.output_prefix, "abcd0123", 0))
    files.validate_result(spec, run_compaction(run))


Change = Callable[[CompactionSpec, CompactionResult], tuple[CompactionSpec, CompactionResult]]


def _clip_inputs(spec: CompactionSpec, end: bytes) -> CompactionSpec:
    """`spec` with every input clipped to keys below `end`."""
    inputs = tuple(
        replace(i, tables=tuple(replace(t, clip_end=end) for t in i.tables)) for i in spec.inputs
    )
    return replace(spec, inputs=inputs)


def _rename(i: int, name: Callable[[CompactionSpec, CompactionResult], str]) -> Change:
    return lambda s, r: (s, _with_output(r, i, name=name(s, r)))


BAD_RESULTS: dict[str, tuple[Change, str]] = {
    "another compaction": (
        lambda s, r: (s, replace(r, compaction_id="other")),
        "result is for other",
    ),
    "an input's name": (
        _rename(0, lambda s, r: s.inputs[0].tables[0].name),
        "not named as an output with prefix",
    ),
    "outside the prefix": (
        _rename(0, lambda s, r: "000001-c" + "f" * 16 + "-" + "0" * 16 + "-0000.sst"),
        "not named as an output with prefix",
    ),
    "a path": (
        _rename(0, lambda s, r: s.output_prefix + "../" + "0" * 16 + "-0000.sst"),
        "not named as an output with prefix",
    ),
    "not a table name": (
        _rename(0, lambda s, r: s.output_prefix + "x.sst"),
        "not named as an output with prefix",
    ),
    "a name twice": (
        _rename(1, lambda s, r: r.outputs[0].name),
        "listed twice",
    ),
    "too small": (
        lambda s, r: (s, _with_output(r, 0, size=10)),
        "less than a table's footer",
    ),
    "empty": (
        lambda s, r: (s, _with_output(r, 0, entries=0, tombstones=0)),
        "0 entries",
    ),
    "more tombstones than entries": (
        lambda s, r: (s, _with_output(r, 0, tombstones=r.outputs[0].entries + 1)),
        "tombstones",
    ),
    "a negative expiry": (
        lambda s, r: (s, _with_output(r, 0, min_expiry_ms=-1)),
        "negative min_expiry_ms",
    ),
    "reversed keys": (
        lambda s, r: (s, _with_output(r, 0, smallest=r.outputs[0].largest + b"\xff")),
        "out of order",
    ),
    "overlapping outputs": (
        lambda s, r: (s, _with_output(r, 1, smallest=r.outputs[0].largest)),
        "overlaps its predecessor",
    ),
    "out of order outputs": (
        lambda s, r: (s, replace(r, outputs=r.outputs[::-1])),
        "out of order",
    ),
    "outside the key range": (
        lambda s, r: (replace(s, key_range=(r.outputs[0].largest, None)), r),
        "outside the spec's key range",
    ),
    "below the inputs' keys": (
        lambda s, r: (s, _with_output(r, 0, smallest=b"a")),
        "outside the key span of the inputs",
    ),
    "above the inputs' keys": (
        lambda s, r: (s, _with_output(r, len(r.outputs) - 1, largest=b"z")),
        "outside the key span of the inputs",
    ),
    "an output of another root": (
        lambda s, r: (s, _with_output(r, 0, root="memory://other/db")),
        "carries a root or a clip range",
    ),
    "a clipped output": (
        lambda s, r: (s, _with_output(r, 0, clip_end=r.outputs[0].largest)),
        "carries a root or a clip range",
    ),
    "outside the inputs' clips": (
        lambda s, r: (_clip_inputs(s, r.outputs[-1].largest), r),
        "outside the key span of the inputs",
    ),
    "outputs without inputs": (
        lambda s, r: (replace(s, inputs=()), r),
        "without input tables",
    ),
    "wrong entry total": (
        lambda s, r: (s, replace(r, stats=replace(r.stats, output_entries=1))),
        "output entries do not add up",
    ),
    "wrong byte total": (
        lambda s, r: (s, replace(r, stats=replace(r.stats, output_bytes=1))),
        "output bytes do not add up",
    ),
    "negative stats": (
        lambda s, r: (s, replace(r, stats=replace(r.stats, input_entries=-1))),
        "'input_entries' is -1",
    ),
    "NaN seconds": (
        lambda s, r: (s, replace(r, stats=replace(r.stats, cpu_seconds=math.nan))),
        "'cpu_seconds' is nan",
    ),
}


@pytest.mark.parametrize("kind", BAD_RESULTS)
def test_validate_result_refuses_each_kind_of_bad_result(
    compacted: tuple[CompactionSpec, CompactionResult], kind: str
) -> None:
    change, message = BAD_RESULTS[kind]
    spec, result = change(*compacted)
    with pytest.raises(ValueError, match=message):
        files.validate_result(spec, result)
