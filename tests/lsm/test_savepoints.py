"""Native savepoints of the lsm backend (docs/lsm-protocol.md, "Savepoint pins"): a savepoint pin
keeps the tables until the savepoint is disposed, no table is copied, a restore adopts the
savepoint (also at another parallelism), and a moved savepoint directory stays valid."""

import shutil
from pathlib import Path

from statebackend import BackendConfig, ValueStateDescriptor, create_backend, key_group_of
from statebackend.dfs import relativize, resolve
from statebackend.keygroups import KeyGroupRange
from statebackend.lsm import files
from statebackend.lsm.sharing import collect_retired
from statebackend.serializers import DEFAULT_SERIALIZER
from tests.lsm.stores import (
    MAX_PARALLELISM,
    OPTIONS,
    Operator,
    everything,
    files_below,
    fill,
    ranges,
)

WHOLE = KeyGroupRange(0, MAX_PARALLELISM - 1)


def test_savepoint_pins_keep_tables_until_the_savepoint_is_disposed(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    store = op.open(1, 0)
    at_savepoint = fill(store, WHOLE, 10, b"saved")
    directory = f"file://{tmp_path}/savepoints/sp-1"
    savepoint = store.savepoint(1, directory)
    assert "checkpoint_id" not in savepoint and savepoint["db_root"] == store.db.root
    copy = Path(savepoint["manifest"]["path"].removeprefix("file://"))
    assert copy.parent == tmp_path / "savepoints" / "sp-1" and copy.name.startswith("lsm-")
    fs, path = store.db.fs, store.db._root_path
    saved_tables = store.db.version.names()
    try:
        # The job goes on: overwrites everything, compacts, checkpoints, releases, collects.
        fill(store, WHOLE, 10, b"later")
        store.release(store.snapshot(2), [])
        store.db.compact()
        store.db.collect_garbage()
        assert saved_tables <= set(files.list_tables(fs, path))  # the savepoint's tables stay
        restored = Operator(tmp_path, job="upgraded").open(1, 0, restore=savepoint)
        try:
            assert everything(restored) == at_savepoint  # adopted, never taken over
            assert restored.db.root != store.db.root and store.db._writer.fenced is None
            restored.db.compact()
            restored.db.collect_garbage()  # its reference pin goes
        finally:
            restored.dispose()
        store.db.collect_garbage()
        assert saved_tables <= set(files.list_tables(fs, path))  # still the savepoint's
        op.factory.dispose_savepoint(op.context(0, WHOLE), savepoint)
        store.db.collect_garbage()
        assert set(files.list_tables(fs, path)) == store.db.version.names()
        assert not saved_tables & store.db.version.names()
    finally:
        store.dispose()


def test_a_savepoint_of_a_rescaled_db_keeps_the_shared_tables(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    sources, model = [], {}
    for i in range(2):
        old = op.open(2, i)
        model |= fill(old, ranges(2)[i], 10, b"old")
        sources.append((old.snapshot(1), ranges(2)[i]))
        old.dispose()
    new = op.rescaled(1, 0, sources)
    try:
        savepoint = new.savepoint(1, f"file://{tmp_path}/savepoints/sp-2")
        new.db.compact()  # the live version no longer references the old roots
        for handle, _ in sources:
            new.release(handle, [])  # nor does any checkpoint
        new.db.collect_garbage()
        for handle, _ in sources:
            collect_retired(handle["db_root"], {}, 0)
        restored = Operator(tmp_path, job="copy").open(1, 0, restore=savepoint)
        try:
            assert everything(restored) == model  # the savepoint's shared tables are all there
            restored.db.compact()
            restored.db.collect_garbage()  # it lets go of the tables it shared
        finally:
            restored.dispose()
        op.factory.dispose_savepoint(op.context(0, WHOLE), savepoint)
        for _ in range(2):
            new.db.collect_garbage()
        for handle, _ in sources:
            assert not Path(handle["db_root"].removeprefix("file://")).exists()
    finally:
        new.dispose()


def test_a_moved_savepoint_stays_valid_and_no_table_is_copied(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    store = op.open(1, 0)
    model = fill(store, WHOLE, 8, b"saved")
    store.db.flush()
    tables = files_below(tmp_path, ".sst")
    directory = f"file://{tmp_path}/savepoints/sp"
    handle = store.savepoint(7, directory)
    assert files_below(tmp_path, ".sst") == tables  # only the manifest is copied
    assert files_below(tmp_path / "savepoints", "") == {handle["manifest"]["path"][7:]}
    relative = relativize(handle, directory)  # as a savepoint's metadata records it
    assert relative["manifest"]["path"].startswith("lsm-")
    shutil.move(tmp_path / "savepoints" / "sp", tmp_path / "moved")
    store.dispose()
    restored = Operator(tmp_path, job="other").open(
        1, 0, restore=resolve(relative, f"file://{tmp_path}/moved")
    )
    try:
        assert everything(restored) == model
    finally:
        restored.dispose()
    for _ in range(2):  # idempotent
        op.factory.dispose_savepoint(op.context(0, WHOLE), handle)


def test_a_native_savepoint_restores_at_another_parallelism(tmp_path: Path) -> None:
    config = BackendConfig(
        "lsm", f"file://{tmp_path}/checkpoints", str(tmp_path / "local"), options=OPTIONS
    )
    count = ValueStateDescriptor("count")
    old = create_backend(config, scope="job/op/0", key_group_range=WHOLE)
    for i in range(300):
        old.set_current_key(i)
        old.get_state(count).update(i * 2)
    handle = old.savepoint(1, f"file://{tmp_path}/savepoints/sp", "native").to_dict()
    old.dispose()
    seen = []
    for index, key_groups in enumerate(ranges(3)):
        new = create_backend(
            config, scope=f"upgraded/op/{index}", key_group_range=key_groups, restore=[handle]
        )
        try:
            keys = list(new.keys("count"))
            groups = {key_group_of(DEFAULT_SERIALIZER.serialize(k), MAX_PARALLELISM) for k in keys}
            assert groups <= set(key_groups)
            for k in keys:
                new.set_current_key(k)
                assert new.get_state(count).value() == k * 2
            seen += keys
        finally:
            new.dispose()
    assert sorted(seen) == list(range(300))
