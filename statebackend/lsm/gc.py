"""Garbage collection of a DB's files on the DFS.

What is live (never deleted):
- every table of the last `manifest_retention` manifests (so that opening can fall back to an
  older manifest when the newest is damaged) and of every pinned manifest (retained checkpoints),
  pins being read from all of those manifests;
- the tables the caller names as in use (the current in-memory version, versions held by open
  iterators) and names that start with a protected prefix (flushes and compactions in flight).

Manifests older than the retention window are deleted unless pinned. A table that is not live is
deleted only after it has been seen unreferenced for `grace_s` seconds by this collector: that
covers files written but not yet committed by anyone, e.g. outputs of a remote compaction that
is still running elsewhere, and removes outputs of abandoned compactions once the grace expires.

Before deleting anything the collector checks that the newest readable manifest belongs to its own
epoch, so a fenced zombie cannot delete a newer writer's files.
"""

import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass

import fsspec

from statebackend.lsm.manifest import CorruptManifestError, FencedError, ManifestStore, list_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcResult:
    deleted_tables: tuple[str, ...]
    deleted_manifests: tuple[int, ...]
    pending: int  # unreferenced tables still inside their grace period


class GarbageCollector:
    """Not thread-safe: the DB runs one collection at a time."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root_path: str,
        manifests: ManifestStore,
        grace_s: float,
        manifest_retention: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fs = fs
        self.tables_dir = posixpath.join(root_path, "tables")
        self.manifests = manifests
        self.grace_s = grace_s
        self.retention = max(1, manifest_retention)
        self.clock = clock
        self._unreferenced_since: dict[str, float] = {}
        # number -> (tables, pinned numbers, epoch); a manifest file never changes once written
        self._manifest_info: dict[int, tuple[frozenset[str], frozenset[int], int]] = {}

    def collect(
        self, epoch: int, in_use: set[str], protected_prefixes: tuple[str, ...]
    ) -> GcResult:
        numbers = self.manifests.numbers()
        retained = numbers[-self.retention :]
        pins: set[int] = set()
        live = set(in_use)
        newest_epoch = None
        for number in reversed(retained):
            m = self._read(number)
            if m is None:
                continue
            tables, manifest_pins, manifest_epoch = m
            if newest_epoch is None:
                newest_epoch = manifest_epoch
            live |= tables
            pins |= manifest_pins
        if newest_epoch is not None and newest_epoch > epoch:
            raise FencedError(
                f"{self.manifests.dir}: epoch {newest_epoch} > {epoch}; not collecting"
            )
        for number in pins:
            m = self._read(number)
            if m is not None:
                live |= m[0]
        deleted_manifests = []
        for number in numbers[: -self.retention]:
            if number not in pins:
                self.manifests.delete(number)
                self._manifest_info.pop(number, None)
                deleted_manifests.append(number)
        return self._sweep(live, protected_prefixes, tuple(deleted_manifests))

    def _read(self, number: int) -> tuple[frozenset[str], frozenset[int], int] | None:
        info = self._manifest_info.get(number)
        if info is None:
            try:
                m = self.manifests.read(number)
            except (FileNotFoundError, CorruptManifestError):
                return None
            info = frozenset(m.version.names()), frozenset(m.pins.values()), m.epoch
            self._manifest_info[number] = info
        return info

    def _sweep(
        self, live: set[str], protected: tuple[str, ...], deleted_manifests: tuple[int, ...]
    ) -> GcResult:
        now = self.clock()
        seen: dict[str, float] = {}
        deleted = []
        for name in list_names(self.fs, self.tables_dir):
            if name in live or name.startswith(protected):
                continue
            since = self._unreferenced_since.get(name, now)
            if now - since >= self.grace_s:
                try:
                    self.fs.rm_file(posixpath.join(self.tables_dir, name))
                except FileNotFoundError:
                    pass
                deleted.append(name)
            else:
                seen[name] = since
        self._unreferenced_since = seen  # forget files that vanished or became live
        if deleted or deleted_manifests:
            log.info("gc deleted %d tables, %d manifests", len(deleted), len(deleted_manifests))
        return GcResult(tuple(deleted), deleted_manifests, len(seen))
