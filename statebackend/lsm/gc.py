"""Garbage collection of one DB root's files on the DFS.

Two collections, both by the rules of docs/lsm-protocol.md:
- `collect`: the collection of the root's writer ("Garbage collection and the grace period"):
  what is live, what a protected prefix keeps, the grace period, and why a fenced or older
  writer deletes nothing of a newer one; pins of other DBs and of savepoints keep tables too.
- `collect_retired`: the collection of a retired root, which anyone may run ("Retired roots"):
  only the root's pins keep anything, and once nothing is pinned and no table is left the
  caller may delete the whole root.

Both report the tables of other roots that the manifests they keep reference (`GcResult.foreign`),
so the caller can shrink its reference pins there. Names, protection and deletion come from
`files`, pins from `pins`.
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import fsspec

from statebackend.lsm.files import (
    delete_table,
    is_protected,
    list_tables,
    written_by_newer_epoch,
)
from statebackend.lsm.manifest import CorruptManifestError, FencedError, ManifestStore
from statebackend.lsm.pins import RootPins, delete_pin, read_pins

log = logging.getLogger(__name__)

# A pin file that does not verify may be one being written: it is deleted only once it has been
# seen damaged for this long at least (or the grace period, if longer).
DAMAGED_PIN_GRACE_S = 60.0


@dataclass(frozen=True)
class GcResult:
    deleted_tables: tuple[str, ...]
    deleted_manifests: tuple[int, ...]
    pending: int  # unreferenced tables still inside their grace period
    # Tables of other roots referenced by the manifests this collection keeps: root -> names.
    foreign: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Retired collection: nothing is pinned and no table is left; the root may be deleted.
    emptied: bool = False


@dataclass(frozen=True)
class _ManifestInfo:
    tables: frozenset[str]  # of this root
    foreign: frozenset[tuple[str, str]]  # (root, name) of other roots
    pins: tuple[tuple[int, int], ...]  # (checkpoint id, manifest number)
    epoch: int


class GarbageCollector:
    """Not thread-safe: its owner runs one collection at a time."""

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
        # file name (table or damaged pin) -> when this collector first saw it so
        self._unreferenced_since: dict[str, float] = {}
        self._manifest_info: dict[int, _ManifestInfo] = {}  # a manifest never changes

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
        live = set(in_use)
        foreign: set[tuple[str, str]] = set()
        checkpoint_pins: set[tuple[int, int]] = set()
        newest_epoch = None
        for number in reversed(retained):
            m = self._read(number)
            if m is None:
                continue
            if newest_epoch is None:
                newest_epoch = m.epoch
            live |= m.tables
            foreign |= m.foreign
            checkpoint_pins.update(m.pins)
        if newest_epoch is not None and newest_epoch > epoch:
            raise FencedError(
                f"{self.manifests.dir}: epoch {newest_epoch} > {epoch}; not collecting"
            )
        pins = read_pins(self.fs, self.root_path)
        pinned = {n for c, n in checkpoint_pins if c not in pins.released}
        pinned |= set(pins.savepoints.values())
        self._keep_pinned(pinned, live, foreign)
        live |= pins.referenced()
        now = self.clock()
        unreferenced: dict[str, float] = {}
        old = [n for n in numbers[: -self.retention] if n not in pinned]
        deleted_manifests = self._delete_manifests(old, pins)
        candidates = [
            n
            for n in names
            if not (
                n in live or is_protected(n, protected_prefixes) or written_by_newer_epoch(n, epoch)
            )
        ]
        return self._finish(candidates, pins, now, unreferenced, deleted_manifests, foreign)

    def collect_retired(
        self, shrink_references: Callable[[Mapping[str, frozenset[str]]], bool]
    ) -> GcResult | None:
        """Collect a retired root (none of its writers will write again); None, and nothing
        done, when the root is not retired: no retirement marker, or a manifest of a newer epoch
        than the newest marker's (a writer took it over; its own collector collects).

        Before deleting anything it calls `shrink_references` with the tables of other roots
        that the pinned manifests reference; when that returns False (it could not shrink this
        root's reference pins to them), nothing is deleted this time.
        """
        names = list_tables(self.fs, self.root_path)
        numbers = self.manifests.numbers()
        pins = read_pins(self.fs, self.root_path)
        if not pins.retired:
            return None
        epoch = max(pins.retired)
        newest = next((m for m in map(self._read, reversed(numbers)) if m is not None), None)
        if newest is not None and newest.epoch > epoch:
            return None
        checkpoints = pins.retired[epoch]
        pinned = {n for c, n in checkpoints.items() if c not in pins.released}
        pinned |= set(pins.savepoints.values())
        live: set[str] = pins.referenced()
        foreign: set[tuple[str, str]] = set()
        certain = self._keep_pinned(pinned, live, foreign, set(numbers))
        by_root = _by_root(foreign)
        if not certain or not shrink_references(by_root):
            # a pinned manifest is unreadable (what it keeps is unknown), or the reference pins
            # elsewhere still name more than the pinned manifests: delete nothing now
            return GcResult((), (), 0, by_root)
        now = self.clock()
        unreferenced: dict[str, float] = {}
        unpinned = [n for n in numbers if n not in pinned]  # no reader: restores go through pins
        deleted_manifests = self._delete_manifests(unpinned, pins)
        candidates = [n for n in names if n not in live and not written_by_newer_epoch(n, epoch)]
        result = self._finish(candidates, pins, now, unreferenced, deleted_manifests, foreign)
        left = set(names) - set(result.deleted_tables)
        if pinned & set(numbers) or pins.holds_anything() or left:
            return result
        return GcResult(result.deleted_tables, result.deleted_manifests, 0, by_root, True)

    def _keep_pinned(
        self,
        pinned: set[int],
        live: set[str],
        foreign: set[tuple[str, str]],
        present: set[int] | None = None,
    ) -> bool:
        """Add the tables of the `pinned` manifests to `live` and `foreign`; False when one that
        is `present` (listed) cannot be read. A pinned manifest that is gone keeps nothing."""
        certain = True
        for number in pinned:
            m = self._read(number)
            if m is None:
                certain = certain and present is not None and number not in present
                continue
            live |= m.tables
            foreign |= m.foreign
        return certain

    def _delete_manifests(self, candidates: list[int], pins: RootPins) -> tuple[int, ...]:
        """Delete the `candidates`, unless a damaged pin may pin one of them."""
        if pins.damaged:
            return ()
        for number in candidates:
            try:
                self.manifests.delete(number)
            except FileNotFoundError:
                pass
            self._manifest_info.pop(number, None)
        return tuple(candidates)

    def _finish(
        self,
        candidates: list[str],
        pins: RootPins,
        now: float,
        unreferenced: dict[str, float],
        deleted_manifests: tuple[int, ...],
        foreign: set[tuple[str, str]],
    ) -> GcResult:
        """Delete the candidate tables that are due, and damaged pins seen long enough; forget
        files that vanished or became live."""
        deleted: list[str] = []
        pending = len(candidates)  # a damaged pin may name any of them: all wait
        if not pins.damaged:
            deleted = self._due(candidates, now, unreferenced)
            pending -= len(deleted)
            for name in deleted:
                delete_table(self.fs, self.root_path, name)
        grace = max(self.grace_s, DAMAGED_PIN_GRACE_S)
        for name in pins.damaged:
            since = self._unreferenced_since.get(name, now)
            if now - since >= grace:
                log.warning("%s: deleting pin %s, damaged for %.0fs", self.root_path, name, grace)
                delete_pin(self.fs, self.root_path, name)
            else:
                unreferenced[name] = since
        self._unreferenced_since = unreferenced
        if deleted or deleted_manifests:
            log.info("gc deleted %d tables, %d manifests", len(deleted), len(deleted_manifests))
        return GcResult(tuple(deleted), deleted_manifests, pending, _by_root(foreign))

    def _due(self, names: list[str], now: float, unreferenced: dict[str, float]) -> list[str]:
        """The `names` seen unreferenced for the grace period; the others are recorded in
        `unreferenced` with the time they were first seen so."""
        due = []
        for name in names:
            since = self._unreferenced_since.get(name, now)
            if now - since >= self.grace_s:
                due.append(name)
            else:
                unreferenced[name] = since
        return due

    def _read(self, number: int) -> _ManifestInfo | None:
        info = self._manifest_info.get(number)
        if info is None:
            try:
                m = self.manifests.read(number)
            except (FileNotFoundError, CorruptManifestError):
                return None
            info = _ManifestInfo(
                frozenset(m.version.names()),
                frozenset((r, n) for r, names in m.version.foreign().items() for n in names),
                tuple(m.pins.items()),
                m.epoch,
            )
            self._manifest_info[number] = info
        return info



def _by_root(refs: set[tuple[str, str]]) -> dict[str, frozenset[str]]:
    by_root: dict[str, set[str]] = {}
    for root, name in refs:
        by_root.setdefault(root, set()).add(name)
    return {root: frozenset(names) for root, names in by_root.items()}
