"""The lsm backend's native rescale and adoption (docs/lsm-protocol.md, "Adopting versions of other
databases"): new subtasks' DBs start from the old DBs' pinned versions, clipped to their key
groups, without copying a table; `export`; restores of foreign handles adopt instead of fencing."""

import uuid
from pathlib import Path

import fsspec
import pytest

from statebackend.errors import InvalidHandleError, MissingCheckpointDataError
from statebackend.keygroups import KeyGroupRange
from statebackend.layout import key_group_prefix
from statebackend.lsm import files
from statebackend.lsm.backend import LsmStore
from statebackend.lsm.manifest import FencedError
from statebackend.lsm.table import FsFileSource, TableReader
from statebackend.store import StoreHandle
from tests.lsm.stores import (
    MAX_PARALLELISM,
    Operator,
    everything,
    files_below,
    fill,
    key,
    ranges,
    within,
)

Sources = list[tuple[StoreHandle, KeyGroupRange]]


@pytest.fixture(params=["file", "memory", "s3"])
def operator(request: pytest.FixtureRequest, tmp_path: Path) -> Operator:
    if request.param == "memory":
        return Operator(tmp_path, f"memory://rescale-{uuid.uuid4().hex}/checkpoints")
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        options = bucket.storage_options
        return Operator(tmp_path, bucket.path("checkpoints"), storage_options=options)
    return Operator(tmp_path)


def run_old(op: Operator, parallelism: int, per_group: int = 12) -> tuple[Sources, dict]:
    """`parallelism` subtasks write, snapshot (checkpoint 1) and stop; their sources and model."""
    sources, model = [], {}
    for i, key_groups in enumerate(ranges(parallelism)):
        store = op.open(parallelism, i)
        model |= fill(store, key_groups, per_group, b"p%d" % parallelism)
        sources.append((store.snapshot(1), key_groups))
        store.dispose()
    return sources, model


def check_exact(stores: list[LsmStore], model: dict) -> None:
    """Each store holds exactly the model's entries of its key groups, by scan and by get."""
    parallelism = len(stores)
    for store, key_groups in zip(stores, ranges(parallelism), strict=True):
        assert everything(store) == within(model, key_groups)
        for k, v in model.items():
            assert store.get(k) == (v if within({k: v}, key_groups) else None)


def dispose(stores: list[LsmStore]) -> None:
    for store in stores:
        store.dispose()


def tables_and_manifests(op: Operator) -> dict[str, bytes]:
    """Every table and manifest below the operator's checkpoint directory, with its bytes."""
    fs, path = op.filesystem()
    fs.invalidate_cache()
    found = fs.find(path)
    return {p: fs.cat_file(p) for p in found if p.endswith((".sst", ".manifest"))}


def test_rescale_2_to_3_holds_each_key_group_exactly_and_copies_no_table(
    operator: Operator,
) -> None:
    sources, model = run_old(operator, 2)
    before = tables_and_manifests(operator)
    tables = {p for p in before if p.endswith(".sst")}
    assert len(tables) >= 6  # several tables per old DB
    new = [operator.rescaled(3, i, sources) for i in range(3)]
    try:
        after = tables_and_manifests(operator)
        assert {p for p in after if p.endswith(".sst")} == tables  # no table copied
        assert {p: after[p] for p in before} == before  # the old roots are untouched
        check_exact(new, model)
        for store, (handle, _) in zip(new, sources, strict=False):
            assert store.db.root != handle["db_root"]  # a fresh root, also for the same index
            assert files.is_root_of(f"{handle['db_root']}", store.db.root)
    finally:
        dispose(new)


def test_rescale_3_to_1_and_writes_after_it(operator: Operator) -> None:
    sources, model = run_old(operator, 3)
    (store,) = new = [operator.rescaled(1, 0, sources)]
    try:
        check_exact(new, model)
        model |= fill(store, KeyGroupRange(0, MAX_PARALLELISM - 1), 3, b"after")
        for i in range(0, 40):
            store.delete(key(i, 0))
            model.pop(key(i, 0))
        check_exact(new, model)
        store.db.compact()
        check_exact(new, model)
        assert store.db.version.foreign() == {}  # every shared table was rewritten
    finally:
        dispose(new)


def test_rescale_2_to_3_to_2(operator: Operator) -> None:
    sources, model = run_old(operator, 2)
    middle = [operator.rescaled(3, i, sources) for i in range(3)]
    try:
        middle_sources = []
        for i, (store, key_groups) in enumerate(zip(middle, ranges(3), strict=True)):
            model |= fill(store, key_groups, 4, b"mid")
            if i == 1:
                store.db.compact()  # one middle DB holds no foreign table any more
            middle_sources.append((store.snapshot(2), key_groups))
    finally:
        dispose(middle)
    final = [operator.rescaled(2, i, middle_sources) for i in range(2)]
    try:
        check_exact(final, model)
        roots = set().union(*(s.db.version.foreign() for s in final))
        assert any(r.endswith("/db") for r in roots)  # tables of the first DBs, via the middle
        assert any(not r.endswith("/db") for r in roots)  # and of the middle DBs
    finally:
        dispose(final)


def test_compactions_drop_the_entries_outside_the_key_groups(operator: Operator) -> None:
    sources, model = run_old(operator, 2)
    new = [operator.rescaled(3, i, sources) for i in range(3)]
    try:
        for store, key_groups in zip(new, ranges(3), strict=True):
            store.db.compact()
            version = store.db.version
            assert version.foreign() == {} and all(t.is_whole for _, t in version.tables())
            lo, hi = key_group_prefix(key_groups.start), key_group_prefix(key_groups.end + 1)
            kept = []
            for _, t in version.tables():
                path = files.table_path(store.db._root_path, t.name)
                kept += [k for k, _ in TableReader(FsFileSource(store.db.fs, path), t.name).scan()]
            assert kept and all(lo <= k < hi for k in kept)  # physically gone, not only hidden
            assert len(kept) == len(within(model, key_groups))
        check_exact(new, model)
    finally:
        dispose(new)


def test_export_reads_a_range_of_a_snapshot_and_writes_nothing(
    operator: Operator, tmp_path: Path
) -> None:
    sources, model = run_old(operator, 2)
    fs, path = operator.filesystem()
    before = {p: fs.cat_file(p) for p in fs.find(path)}
    handle, key_groups = sources[1]
    start, end = key_group_prefix(key_groups.start + 3), key_group_prefix(key_groups.start + 9)
    context = operator.context(0, ranges(1)[0])
    exported = operator.factory.export(context, handle, start, end)
    first = next(exported)
    rest = list(exported)
    assert dict([first, *rest]) == {k: v for k, v in model.items() if start <= k < end}
    assert [k for k, _ in [first, *rest]] == sorted(k for k, _ in [first, *rest])
    fs.invalidate_cache()
    assert {p: fs.cat_file(p) for p in fs.find(path)} == before  # read-only
    assert files_below(tmp_path / "local", "") == set()  # no local file left


def test_a_foreign_handle_is_adopted_and_never_fences_the_old_db(tmp_path: Path) -> None:
    old_job = Operator(tmp_path, job="old")
    new_job = Operator(tmp_path, job="new")
    old = old_job.open(1, 0)
    whole = ranges(1)[0]
    snapshot = fill(old, whole, 8, b"before")
    handle = old.snapshot(1)
    epoch = old.db.epoch
    adopted = new_job.open(1, 0, restore=handle)
    try:
        assert adopted.db.root.startswith(f"file://{tmp_path}/checkpoints/new/op/0/db-")
        assert everything(adopted) == snapshot
        # The old DB keeps writing, compacting, checkpointing and collecting, unfenced.
        later = fill(old, whole, 8, b"later")
        old.db.compact()  # `later` overwrites every key: the snapshot's tables are not needed
        old.snapshot(2)
        old.release(handle, [])
        old.db.collect_garbage()  # grace 0: only the reference pin keeps the adopted tables
        fs, path = old.db.fs, old.db._root_path
        assert set(files.list_tables(fs, path)) > old.db.version.names()
        assert old.db.epoch == epoch and old.db._writer.fenced is None
        assert everything(old) == later
        assert everything(adopted) == snapshot  # its tables are still there
        adopted.db.compact()
        assert everything(adopted) == snapshot
    finally:
        adopted.dispose()
        old.dispose()


def test_a_restore_of_the_subtasks_own_root_takes_it_over(operator: Operator) -> None:
    sources, model = run_old(operator, 2)
    (store,) = [operator.rescaled(1, 0, sources)]
    handle = store.snapshot(2)
    restored = operator.open(1, 0, restore=handle)  # same scope: an adopting root of it
    try:
        assert restored.db.root == store.db.root and restored.db.epoch == store.db.epoch + 1
        assert everything(restored) == model
        with pytest.raises(FencedError):
            store.put(key(0, 0), b"zombie")
            store.db.flush()
    finally:
        restored.dispose()
        store.dispose()


def test_a_failed_rescale_leaves_nothing_behind(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    sources, _ = run_old(op, 2)
    fs, path = fsspec.core.url_to_fs(op.checkpoint_dir)
    first_root = fsspec.core.url_to_fs(sources[0][0]["db_root"])[1]
    for table in fs.ls(f"{first_root}/tables", detail=False):
        fs.rm_file(table)
    before = set(fs.find(path, withdirs=True))
    with pytest.raises(MissingCheckpointDataError, match="missing"):
        op.rescaled(3, 1, sources)
    assert set(fs.find(path, withdirs=True)) == before  # no root, pin or marker written


def test_a_rescale_refuses_a_handle_of_other_key_groups(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    sources, _ = run_old(op, 2)
    with pytest.raises(InvalidHandleError, match="key groups"):
        op.rescaled(3, 0, [(sources[0][0], sources[1][1]), (sources[1][0], sources[0][1])])
