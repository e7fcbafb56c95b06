"""Stores of the `lsm` backend for tests: the contexts of one operator's subtasks, entries keyed by
key group, and what a store holds per key group."""

import os
from pathlib import Path
from typing import Any

import fsspec

from statebackend.dfs import filesystem
from statebackend.keygroups import KeyGroupRange
from statebackend.layout import key_group_prefix
from statebackend.lsm.backend import LsmStore, LsmStoreFactory
from statebackend.store import RescaleSource, StoreContext, StoreHandle

MAX_PARALLELISM = 128
# Tiny tables so a few hundred entries make several tables and levels; no gc grace; compactions
# only when a test asks (so that counting files is exact) unless a test turns them on.
OPTIONS: dict[str, Any] = {
    "lsm.memtable_bytes": 4096,
    "lsm.block_size": 512,
    "lsm.target_file_size": 4096,
    "lsm.level_base_bytes": 16384,
    "lsm.l0_compaction_trigger": 3,
    "lsm.gc_grace_s": 0,
    "lsm.gc_interval_s": 3600,
    "lsm.manifest_retention": 1,
    "lsm.auto_compact": False,
    "compaction_mode": "local",
}


def ranges(parallelism: int) -> list[KeyGroupRange]:
    return [KeyGroupRange.of_subtask(MAX_PARALLELISM, parallelism, i) for i in range(parallelism)]


class Operator:
    """The subtasks' stores of one operator `job/op` (scopes `job/op/<i>`) below `tmp`."""

    def __init__(
        self,
        tmp: Path,
        checkpoint_dir: str | None = None,
        job: str = "job",
        storage_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.tmp = tmp
        self.checkpoint_dir = checkpoint_dir or f"file://{tmp}/checkpoints"
        self.job = job
        self.storage_options = storage_options or {}
        self.options = {**OPTIONS, **options}
        self.factory = LsmStoreFactory()

    def filesystem(self, url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
        """The file system and path of `url` (default: the checkpoint directory)."""
        return filesystem(url or self.checkpoint_dir, self.storage_options)

    def context(self, index: int, key_groups: KeyGroupRange) -> StoreContext:
        return StoreContext(
            f"{self.job}/op/{index}",
            key_groups,
            self.checkpoint_dir,
            str(self.tmp / "local"),
            storage_options=self.storage_options,
            options=self.options,
        )

    def open(self, parallelism: int, index: int, restore: StoreHandle | None = None) -> LsmStore:
        return self.factory.open(self.context(index, ranges(parallelism)[index]), restore)

    def rescaled(
        self, parallelism: int, index: int, sources: list[tuple[StoreHandle, KeyGroupRange]]
    ) -> LsmStore:
        context = self.context(index, ranges(parallelism)[index])
        return self.factory.open_rescaled(context, [RescaleSource(h, r) for h, r in sources])


def key(group: int, i: int) -> bytes:
    """A physical key of key group `group` (state id 1, a plain key)."""
    return key_group_prefix(group) + b"\x00\x01" + b"key-%05d\x00\x01" % i


def fill(store: LsmStore, key_groups: KeyGroupRange, per_group: int, tag: bytes) -> dict:
    """Puts `per_group` entries in each key group; returns them."""
    written = {}
    for group in key_groups:
        for i in range(per_group):
            written[key(group, i)] = tag + b"-%d-%d" % (group, i)
    for k, v in written.items():
        store.put(k, v)
    return written


def within(model: dict[bytes, bytes], key_groups: KeyGroupRange) -> dict[bytes, bytes]:
    lo, hi = key_group_prefix(key_groups.start), key_group_prefix(key_groups.end + 1)
    return {k: v for k, v in model.items() if lo <= k < hi}


def everything(store: LsmStore) -> dict[bytes, bytes]:
    """What a full scan of the store yields (also keys outside its key groups, if any)."""
    return dict(store.scan(b"", b"\xff\xff"))


def files_below(directory: Path, suffix: str) -> set[str]:
    found = set()
    for folder, _, names in os.walk(directory):
        found |= {os.path.join(folder, n) for n in names if n.endswith(suffix)}
    return found
