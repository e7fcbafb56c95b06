"""The compaction service and table references to other roots, clipped (docs/lsm-protocol.md,
"Table references"): inputs are read from their roots within their clips, only below the allowed
roots, and outputs always go to the spec's own root; a rescaled DB compacts through a service."""

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from compaction_service.client import RemoteCompactor
from compaction_service.convert import result_from_proto, spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.security import AccessDenied, RootGuard
from statebackend.lsm.backend import LsmStoreFactory
from statebackend.lsm.compaction_job import CompactionInput, run_compaction
from statebackend.lsm.meta import TableMeta
from tests.compaction_service.helpers import (
    DirWatch,
    make_spec,
    read_outputs,
    snapshot,
    table_names,
    write_tables,
)
from tests.lsm.stores import Operator, everything, fill, ranges, within


def _clipped(tables: list[TableMeta], root: str) -> tuple[list[TableMeta], bytes, bytes]:
    """`tables` of `root` clipped to the middle half of their keys, and that clip."""
    lo = min(t.smallest for t in tables)
    hi = max(t.largest for t in tables)
    start, end = bytes([lo[0] + (hi[0] - lo[0]) // 4]), bytes([lo[0] + 3 * (hi[0] - lo[0]) // 4])
    return [t.clipped(root, start, end) for t in tables], start, end


@pytest.mark.parametrize("subcompactions", [False, True])
def test_inputs_of_another_root_are_read_within_their_clips(start_service, subcompactions) -> None:
    running = start_service(workers=2, subcompaction_min_bytes=64 << 10)
    db, old = f"{running.root}/db", f"{running.root}/old"
    own = write_tables(db, tables=1, entries=2000, seed=1)
    shared, start, end = _clipped(write_tables(old, tables=2, entries=3000, seed=2), old)
    spec = make_spec(db, [], inputs=(CompactionInput(0, (*own, *shared)),))
    old_tables = table_names(old)
    request = pb.CompactRequest(spec=spec_to_proto(spec), allow_subcompactions=subcompactions)
    response = running.stub().Compact(request, timeout=60)
    result = result_from_proto(response.result)
    assert response.subcompactions == (2 if subcompactions else 1)
    assert {t.name for t in result.outputs} <= table_names(db)  # outputs in the spec's root
    assert table_names(old) == old_tables  # nothing written in the other root
    rows = read_outputs(db, result)
    assert rows == read_outputs(db, run_compaction(spec))
    own_keys = {k for k, _ in read_outputs(db, replace(result, outputs=tuple(own)))}
    assert all(start <= k < end or k in own_keys for k, _ in rows)
    assert any(start <= k < end and k not in own_keys for k, _ in rows)


def test_an_input_root_outside_the_allowed_roots_is_denied(start_service, tmp_path) -> None:
    running = start_service()
    outside = tmp_path / "outside"
    shared, _, _ = _clipped(write_tables(f"file://{outside}/db", 1, 50), f"file://{outside}/db")
    (tmp_path / "allowed").mkdir(exist_ok=True)
    (tmp_path / "allowed" / "escape").symlink_to(outside)
    linked = [replace(t, root=f"{running.root}/escape/db") for t in shared]  # a link out
    own = write_tables(f"{running.root}/db", 1, 50)
    before = snapshot(outside)
    watch = DirWatch(outside, outside / "db", outside / "db" / "tables")
    try:
        for inputs in (shared, linked):
            spec = make_spec(f"{running.root}/db", [*own, *inputs])
            with pytest.raises(grpc.RpcError) as error:
                running.stub().Compact(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=30)
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "outside the allowed roots" in error.value.details()
        running.service.stop()
        assert watch.events() == []
    finally:
        watch.close()
    assert snapshot(outside) == before


def test_confine_gives_inputs_of_other_roots_their_real_root(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    shared = write_tables(f"file://{allowed}/real/old", 1, 20)
    (allowed / "alias").symlink_to(allowed / "real")
    guard = RootGuard([f"file://{allowed}"])
    refs = [t.clipped(f"file://{allowed}/alias/old", None, None) for t in shared]
    confined = guard.confine(make_spec(f"file://{allowed}/db", refs))
    (table,) = confined.inputs[0].tables
    assert table.root == f"file://{allowed}/real/old" and table.name == shared[0].name
    bad = [t.clipped("file:///etc", None, None) for t in shared]
    with pytest.raises(AccessDenied):
        guard.confine(make_spec(f"file://{allowed}/db", bad))


def test_a_rescaled_db_compacts_through_the_service(start_service, tmp_path: Path) -> None:
    running = start_service(workers=2)
    compactor = RemoteCompactor([running.address], backoff_s=30.0)
    op = Operator(tmp_path, f"{running.root}/checkpoints")
    op.factory = LsmStoreFactory(compactor)
    try:
        sources, model = [], {}
        for i, key_groups in enumerate(ranges(2)):
            old = op.open(2, i)
            model |= fill(old, key_groups, 12, b"old")
            sources.append((old.snapshot(1), key_groups))
            old.dispose()
        new = [op.rescaled(3, i, sources) for i in range(3)]
        try:
            for store, key_groups in zip(new, ranges(3), strict=True):
                assert store.db.version.foreign()
                store.db.compact()
                assert store.db.version.foreign() == {}
                assert store.db.compactions_remote == store.db.compactions_installed >= 1
                assert everything(store) == within(model, key_groups)
        finally:
            for store in new:
                store.dispose()
        assert compactor.stats.remote_ok >= 3 and compactor.stats.fallbacks == 0
    finally:
        compactor.close()
