"""The protocol: generated code is current, specs/results survive the wire unchanged, and every
numeric spec field has one documented range."""

from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from compaction_service.convert import (
    SPEC_RANGES,
    range_text,
    result_from_proto,
    result_to_proto,
    spec_from_proto,
    spec_to_proto,
)
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto.generate import GENERATED, PROTO, REPO_ROOT, generate
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    CompactionStats,
    run_compaction,
)
from statebackend.lsm.table import TableMeta, TableOptions
from tests.compaction_service.helpers import make_spec, set_spec_field, write_tables


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    committed = REPO_ROOT / Path(PROTO).parent
    for path in fresh:
        assert (committed / path.name).read_bytes() == path.read_bytes(), (
            f"{path.name} is stale: run python -m compaction_service.proto.generate"
        )
    assert sorted(p.name for p in fresh) == sorted(GENERATED)


def test_spec_and_result_round_trip(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/db"
    tables = write_tables(root, tables=2, entries=500)
    spec = make_spec(
        root,
        [],
        inputs=(CompactionInput(0, tuple(tables[:1])), CompactionInput(1, tuple(tables[1:]))),
        ttl_cutoff_ms=123,
        key_range=(b"", b"\xff"),
        score=2.5,
        bottommost=False,
    )
    wire = pb.CompactionSpec.FromString(spec_to_proto(spec).SerializeToString())
    assert spec_from_proto(wire) == spec
    open_range = replace(spec, key_range=(None, b"m"), ttl_cutoff_ms=None)
    assert spec_from_proto(spec_to_proto(open_range)) == open_range
    result = run_compaction(spec)
    assert result_from_proto(result_to_proto(result)) == result


def test_wrong_result_version_is_rejected() -> None:
    with pytest.raises(ValueError, match="result_version"):
        result_from_proto(pb.CompactionResult(result_version=7))


def _full_spec() -> CompactionSpec:
    meta = TableMeta("t.sst", 100, b"\x00", b"\xff", 3, 1, 99, "flush")
    # A clipped reference to a table of another root:
    shared = TableMeta(
        "s.sst", 100, b"\x00", b"\xff", 3, 1, 99, "flush", "s3://bucket/old", b"\x01", b"\x7f"
    )
    return CompactionSpec(
        version=SPEC_VERSION,
        compaction_id="c-7",
        db_root="s3://bucket/db",
        inputs=(CompactionInput(0, (meta, meta)), CompactionInput(3, (meta, shared))),
        output_level=3,
        target_file_size=1 << 26,
        bottommost=True,
        ttl_cutoff_ms=123,
        output_prefix="000009-",
        table_options=TableOptions(block_size=4096, bloom_bits_per_key=0),
        key_range=(b"\x01", None),
        score=2.5,
    )


def test_every_field_of_a_spec_and_a_result_survives_the_wire() -> None:
    spec = _full_spec()
    wire = pb.CompactionSpec.FromString(spec_to_proto(spec).SerializeToString())
    assert spec_from_proto(wire) == spec
    assert spec_from_proto(wire).inputs[1].tables[1].root == "s3://bucket/old"
    half_open = replace(spec.inputs[1].tables[1], clip_start=None)
    one_bound = replace(spec, inputs=(CompactionInput(0, (half_open,)),))
    assert spec_from_proto(spec_to_proto(one_bound)) == one_bound
    result = CompactionResult(
        1, "c-7", spec.inputs[0].tables, CompactionStats(10, 8, 1, 1, 1000, 800, 0.5, 0.75)
    )
    answer = pb.CompactionResult.FromString(result_to_proto(result).SerializeToString())
    assert result_from_proto(answer) == result


def _clear(m: pb.CompactionSpec, field: str) -> None:
    m.ClearField(field)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "spec_version", 2), "unsupported spec_version 2"),
        (lambda m: setattr(m, "compaction_id", ""), "'compaction_id' is empty"),
        (lambda m: setattr(m, "db_root", ""), "'db_root' is empty"),
        (lambda m: setattr(m, "output_prefix", ""), "'output_prefix' is empty"),
        (lambda m: setattr(m, "output_prefix", "a/b"), "output_prefix 'a/b' is not a plain"),
        (lambda m: setattr(m, "output_prefix", ".."), "output_prefix '..' is not a plain"),
        (lambda m: _clear(m, "table_options"), "'table_options' is missing"),
        (lambda m: setattr(m.table_options, "compression", "lz4"), "compression must be one"),
        (lambda m: _clear(m, "inputs"), "no input tables"),
        (lambda m: setattr(m.inputs[0].tables[0], "name", ""), "table meta without a name"),
        (lambda m: setattr(m, "target_file_size", 0), "'target_file_size' is 0, outside"),
        (lambda m: setattr(m.key_range, "end", b"\x00"), "empty key_range"),
    ],
)
def test_a_malformed_spec_is_refused_naming_what_is_wrong(mutate, message: str) -> None:
    m = spec_to_proto(_full_spec())
    mutate(m)
    with pytest.raises(ValueError, match=message):
        spec_from_proto(m)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "result_version", 0), "unsupported result_version 0"),
        (lambda m: m.ClearField("stats"), "result without stats"),
        (lambda m: setattr(m.outputs[0], "name", ""), "table meta without a name"),
    ],
)
def test_a_malformed_result_is_refused_naming_what_is_wrong(mutate, message: str) -> None:
    meta = TableMeta("t.sst", 100, b"a", b"b", 3, 1, None, "flush")
    m = result_to_proto(
        CompactionResult(1, "c", (meta,), CompactionStats(3, 3, 0, 0, 100, 100, 0.1, 0.1))
    )
    mutate(m)
    with pytest.raises(ValueError, match=message):
        result_from_proto(m)


_NUMERIC = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_FLOAT,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


def _numeric_fields(descriptor: Descriptor, prefix: str = "") -> set[str]:
    found = set()
    for field in descriptor.fields:
        if field.message_type is not None:
            found |= _numeric_fields(field.message_type, f"{prefix}{field.name}.")
        elif field.type in _NUMERIC:
            found.add(f"{prefix}{field.name}")
    return found


def test_every_numeric_spec_field_has_a_range() -> None:
    # spec_version must equal SPEC_VERSION exactly; every other number has bounds.
    assert set(SPEC_RANGES) == _numeric_fields(pb.CompactionSpec.DESCRIPTOR) - {"spec_version"}


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    root = f"file://{tmp_path}/db"
    good = spec_to_proto(make_spec(root, write_tables(root, tables=1, entries=10)))
    for bound in (0, 1):
        m = pb.CompactionSpec()
        m.CopyFrom(good)
        for field, limits in SPEC_RANGES.items():
            set_spec_field(m, field, limits[bound])
        spec = spec_from_proto(m)
        assert spec.target_file_size == SPEC_RANGES["target_file_size"][bound]


def test_the_documentation_lists_every_range() -> None:
    page = (REPO_ROOT / "docs" / "compaction-service.md").read_text()
    table = [line for line in page.splitlines() if line.startswith("| `")]
    rows = {line.split("|")[1].strip(): line for line in table}
    for field in SPEC_RANGES:
        assert f"`{field}`" in rows and range_text(field) in rows[f"`{field}`"], field
