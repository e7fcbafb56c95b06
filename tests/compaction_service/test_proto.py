"""The protocol: generated code is current, and specs/results survive the wire unchanged."""

from dataclasses import replace
from pathlib import Path

import pytest

from compaction_service.convert import (
    result_from_proto,
    result_to_proto,
    spec_from_proto,
    spec_to_proto,
)
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto.generate import GENERATED, PROTO, REPO_ROOT, generate
from statebackend.lsm.compaction_job import CompactionInput, run_compaction
from tests.compaction_service.helpers import make_spec, write_tables


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
