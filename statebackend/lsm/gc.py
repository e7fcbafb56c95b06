"""Garbage collection of a DB's files on the DFS.

The rules (what is live, what a protected prefix keeps, the grace period, and why a fenced or
older writer deletes nothing of a newer one) are stated in docs/lsm-protocol.md, "Garbage
collection and the grace period"; `collect` implements them. Names, protection and deletion
come from `files`.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import fsspec

from statebackend.lsm.files import delete_table, is_protected, list_tables, written_by_newer_epoch
from statebackend.lsm.manifest import CorruptManifestError, FencedError, ManifestStore

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
        self.root_path = root_path
        self.manifests = manifests
        self.grace_s = grace_s
        self.retention = max(1, manifest_retention)
        self.clock = clock
        self._unreferenced_since: dict[str, float] = {}
        # number -> (tables, pinned numbers, epoch); a manifest file never changes once written
        self._manifest_info: dict[int, tuple[frozenset[str], frozenset[int], int]] = {}

    def collect(
        self,
        epoch: int,
        in_use: set[str],
        protected_prefixes: tuple[str, ...],
        listed: Iterable[str] | None = None,
    ) -> GcResult:
        """Collect as the writer of `epoch`. `listed`: the table names present, listed before
        `in_use` and `protected_prefixes` were taken (default: listed now, for a caller whose
        tables cannot change meanwhile)."""
        names = list_tables(self.fs, self.root_path) if listed is None else list(listed)
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
        return self._sweep(names, epoch, live, protected_prefixes, tuple(deleted_manifests))

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
        self,
        names: list[str],
        epoch: int,
        live: set[str],
        protected: tuple[str, ...],
        deleted_manifests: tuple[int, ...],
    ) -> GcResult:
        now = self.clock()
        seen: dict[str, float] = {}
        deleted = []
        for name in names:
            if (
                name in live
                or is_protected(name, protected)
                or written_by_newer_epoch(name, epoch)
            ):
                continue
            since = self._unreferenced_since.get(name, now)
            if now - since >= self.grace_s:
                delete_table(self.fs, self.root_path, name)
                deleted.append(name)
            else:
                seen[name] = since
        self._unreferenced_since = seen  # forget files that vanished or became live
        if deleted or deleted_manifests:
            log.info("gc deleted %d tables, %d manifests", len(deleted), len(deleted_manifests))
        return GcResult(tuple(deleted), deleted_manifests, len(seen))
