"""Tables shared by several DB roots (docs/lsm-protocol.md, "Reference pins", "Retired roots"): no
collection deletes a table another DB or a checkpoint still references, and everything else goes
in the end, old roots included."""

import random
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from statebackend.keygroups import KeyGroupRange
from statebackend.lsm import files
from statebackend.lsm.backend import LsmStore
from statebackend.lsm.sharing import collect_retired
from statebackend.store import StoreHandle
from tests.lsm.stores import (
    MAX_PARALLELISM,
    Operator,
    everything,
    fill,
    key,
    ranges,
    within,
)

Sources = list[tuple[StoreHandle, KeyGroupRange]]
WHOLE = KeyGroupRange(0, MAX_PARALLELISM - 1)


class Cluster:
    """One operator's subtasks through rescales, with a model of every entry and the handles of
    the checkpoints the runtime still retains (released, like the runtime, through any store)."""

    def __init__(self, op: Operator, parallelism: int, seed: int) -> None:
        self.op = op
        self.rng = random.Random(seed)
        self.stores = [op.open(parallelism, i) for i in range(parallelism)]
        self.model: dict[bytes, bytes] = {}
        self.retained: list[StoreHandle] = []
        self.checkpoint = 0
        self.roots: set[str] = set()

    def write(self, n: int) -> None:
        for _ in range(n):
            k = key(self.rng.randrange(MAX_PARALLELISM), self.rng.randrange(30))
            store = self.owner(k)
            if self.rng.random() < 0.15:
                store.delete(k)
                self.model.pop(k, None)
            else:
                v = b"v%d" % self.rng.randrange(10**9)
                store.put(k, v)
                self.model[k] = v

    def owner(self, k: bytes) -> LsmStore:
        group = int.from_bytes(k[:2], "big")
        for store, key_groups in zip(self.stores, ranges(len(self.stores)), strict=True):
            if group in key_groups:
                return store
        raise AssertionError(group)

    def snapshot(self) -> Sources:
        self.checkpoint += 1
        handles = [s.snapshot(self.checkpoint) for s in self.stores]
        self.retained += handles
        return list(zip(handles, ranges(len(self.stores)), strict=True))

    def rescale(self, parallelism: int) -> None:
        sources = self.snapshot()
        for store in self.stores:
            self.roots.add(store.db.root)
            store.dispose()
        self.stores = [self.op.rescaled(parallelism, i, sources) for i in range(parallelism)]

    def release_all_but_last(self) -> None:
        """Drop every retained checkpoint but the newest, each through one store."""
        newest = max(h["checkpoint_id"] for h in self.retained)
        kept = [h for h in self.retained if h["checkpoint_id"] == newest]
        for i, handle in enumerate(h for h in self.retained if h not in kept):
            self.stores[i % len(self.stores)].release(handle, kept)
        self.retained = kept

    def collect_everywhere(self) -> None:
        for store in self.stores:
            store.db.collect_garbage()
        for root in self.roots:
            collect_retired(root, {}, 0)

    def check(self) -> None:
        for store, key_groups in zip(self.stores, ranges(len(self.stores)), strict=True):
            assert everything(store) == within(self.model, key_groups)

    def close(self) -> None:
        for store in self.stores:
            store.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_collection_deletes_a_table_another_db_references(tmp_path: Path, seed: int) -> None:
    # Compactions and collections also run in the background, all the time.
    background = {"lsm.auto_compact": True, "lsm.gc_interval_s": 0.02}
    op = Operator(tmp_path, f"memory://sharing-{uuid.uuid4().hex}/checkpoints", **background)
    cluster = Cluster(op, 2, seed)
    try:
        for parallelism in (3, 1, 2, 3):
            cluster.write(1500)
            cluster.rescale(parallelism)
            cluster.collect_everywhere()
            cluster.check()
            for step in range(4):
                cluster.write(400)
                store = cluster.rng.choice(cluster.stores)
                if step % 2:
                    store.db.compact()
                cluster.snapshot()
                cluster.collect_everywhere()
                cluster.check()
            cluster.release_all_but_last()
            cluster.collect_everywhere()
            cluster.check()
        # Compacting every DB and releasing the old checkpoints frees every old root for good.
        for store in cluster.stores:
            store.db.compact()
        cluster.snapshot()
        cluster.release_all_but_last()
        for _ in range(2):
            cluster.collect_everywhere()  # the pins shrink, then the retired roots go
        cluster.check()
        fs = fsspec.filesystem("memory")
        live = {s.db.root for s in cluster.stores}
        for root in cluster.roots - live:
            assert not fs.exists(fsspec.core.url_to_fs(root)[1]), root
    finally:
        cluster.close()


def test_a_retired_root_deletes_what_nothing_references_after_the_grace_period(
    tmp_path: Path,
) -> None:
    long = 3600.0
    op = Operator(tmp_path, **{"lsm.gc_grace_s": long})
    old = op.open(1, 0)
    model = fill(old, WHOLE, 10, b"old")
    handle = old.snapshot(1)
    old_root = old.db.root
    old.dispose()  # retired
    fs, path = fsspec.core.url_to_fs(old_root)
    tables = set(files.list_tables(fs, path))
    new = op.rescaled(2, 0, [(handle, WHOLE)])  # holds a reference pin in the old root
    try:
        new.db.compact()
        new.db.collect_garbage()  # its pin goes; the checkpoint pin still holds everything
        assert set(files.list_tables(fs, path)) == tables
        new.release(handle, [])  # the last pin: a release marker, then a collection
        first = collect_retired(old_root, {}, long)
        assert first is not None and first.pending == len(tables)  # unreferenced, not yet due
        assert set(files.list_tables(fs, path)) == tables
        time.sleep(0.3)
        second = collect_retired(old_root, {}, 0.25)  # seen unreferenced for >= 0.3s
        assert second is not None and set(second.deleted_tables) == tables and second.emptied
        assert not fs.exists(path)
        assert everything(new) == within(model, ranges(2)[0])
    finally:
        new.dispose()


def test_a_db_keeps_rerunning_a_retired_collection_while_garbage_waits(tmp_path: Path) -> None:
    op = Operator(tmp_path, **{"lsm.gc_grace_s": 0.3})
    old = op.open(1, 0)
    fill(old, WHOLE, 10, b"old")
    handle = old.snapshot(1)
    old_root = old.db.root
    old.dispose()
    new = op.rescaled(1, 0, [(handle, WHOLE)])
    try:
        new.db.compact()
        new.release(handle, [])
        new.db.collect_garbage()  # drops its reference pin, then collects the old root: not due
        fs, path = fsspec.core.url_to_fs(old_root)
        assert files.list_tables(fs, path)
        deadline = time.monotonic() + 30
        while fs.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
            new.db.collect_garbage()  # re-runs the old root's collection, watched
        assert not fs.exists(path)
    finally:
        new.dispose()


def _markers(root: str) -> set[str]:
    fs, path = fsspec.core.url_to_fs(root)
    names = files.list_names(fs, files.pins_dir(path))
    return {n for n in names if n.startswith(("retired-", "released-"))}


def test_a_rescale_retires_the_old_roots_of_its_operator_only(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    other_job = Operator(tmp_path, job="other")
    sources = []
    for i, key_groups in enumerate(ranges(2)):
        old = op.open(2, i)
        fill(old, key_groups, 5, b"old")
        sources.append((old.snapshot(1), key_groups))
        old.db.close()  # as if killed: not disposed, so not retired by itself
    foreign = other_job.open(1, 0)
    fill(foreign, WHOLE, 2, b"foreign")
    foreign_handle = foreign.snapshot(1)
    assert all(_markers(h["db_root"]) == set() for h, _ in sources)
    new = [op.rescaled(1, 0, [*sources])]
    adopter = Operator(tmp_path, job="third").open(1, 0, restore=foreign_handle)
    try:
        for handle, _ in sources:
            epoch = handle["epoch"]
            assert _markers(handle["db_root"]) == {files.retired_marker_name(epoch)}
        assert _markers(foreign.db.root) == set()  # a live DB of another job is never retired
        fill(foreign, WHOLE, 2, b"still")
        foreign.db.flush()
    finally:
        adopter.dispose()
        for store in new:
            store.dispose()
        foreign.dispose()
    assert _markers(foreign.db.root) == {files.retired_marker_name(foreign.db.epoch)}


def test_a_writer_taking_a_root_over_folds_its_markers(tmp_path: Path) -> None:
    op = Operator(tmp_path)
    store = op.open(1, 0)
    early = store.snapshot(1)
    first = fill(store, WHOLE, 3, b"one")
    one = store.snapshot(2)  # written by epoch 1; its manifest still pins checkpoint 1
    store.release(early, [one])
    store.db.close()
    store = op.open(1, 0, restore=one)  # epoch 2
    fill(store, WHOLE, 3, b"two")
    two = store.snapshot(3)
    store.dispose()  # retired at epoch 2, with the pins of checkpoints 2 and 3
    root = one["db_root"]
    rescaled = op.rescaled(1, 0, [(two, WHOLE)])
    try:
        rescaled.release(two, [one])  # checkpoint 3 of the old root: a release marker
        assert _markers(root) == {files.retired_marker_name(2), files.released_marker_name(3)}
        fs, path = fsspec.core.url_to_fs(root)
        numbers = [files.parse_manifest_name(n) for n in files.list_names(fs, f"{path}/manifest")]
        pinned = files.parse_manifest_name(one["manifest"]["path"].rsplit("/", 1)[1])
        assert numbers == [pinned]  # only checkpoint 2's manifest (of epoch 1) is left
    finally:
        rescaled.dispose()
    restored = op.open(1, 0, restore=one)  # the subtask's own root: taken over
    try:
        assert restored.db.root == root and everything(restored) == first
        assert restored.db.epoch == 3  # above the retired writer's, whose manifests are gone
        assert restored.db.pins == {2: pinned}  # the retired writer's pins, less 3 (released)
        assert _markers(root) == set()  # folded into its first manifest, or ended by its epoch
    finally:
        restored.dispose()
