"""Table files shared by several DB roots: reference pins, retired roots and their collection.

The rules are docs/lsm-protocol.md's "Reference pins" and "Retired roots"; this module
implements them with `pins` (the files) and `gc` (the collections):

- `ReferencePins`: the reference pins that one DB root holds in other roots, with the `holds-`
  records in its own root that say where they are. `cover` makes them name at least what a DB
  is about to commit (before its first commit); `reconcile` shrinks them to what the DB can
  still read, after each collection.
- `SharedFiles`: what one open DB does about shared files: its reference pins, releasing a
  checkpoint of another root, and the retired roots whose collection it keeps re-running while
  their garbage waits out the grace period.
- `collect_retired`: the collection of a retired root (anyone may run it, from any process),
  which also shrinks that root's own reference pins, collects the roots whose pins it changed,
  and deletes the whole root once nothing is left. One collector per root and process
  remembers when it first saw each file unreferenced, so a restart is only more conservative.
- `retire`, `release_checkpoint`: the markers written when a root's writer is gone for good,
  and when a checkpoint of a root without a writer is released.
"""

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import fsspec

from statebackend.dfs import filesystem
from statebackend.lsm import files
from statebackend.lsm.gc import GarbageCollector, GcResult
from statebackend.lsm.manifest import CorruptManifestError, ManifestStore
from statebackend.lsm.pins import delete_pin, read_pins, write_marker, write_pin
from statebackend.lsm.version import MAX_LEVELS, Version

log = logging.getLogger(__name__)

Refs = Mapping[str, frozenset[str] | set[str]]
"""Tables of other roots: root URL -> table names."""


class ReferencePins:
    """The reference pins the DB at `root` holds in other roots. Not thread-safe.

    `holds`: the roots its holds records name, when the caller read them already (opening the
    DB reads its pins anyway); None: read them when first needed. `new_root`: `root` is new (an
    adopting DB's), so it holds no pin in a root it has written no pin in: nothing is read there
    to find one."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any],
        holds: Iterable[str] | None = None,
        new_root: bool = False,
    ) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options)
        self.fs, self.path = filesystem(self.root, self.storage_options)
        self.id = files.root_id(self.root)
        self._holds = None if holds is None else list(holds)
        self._new_root = new_root
        # other root -> (tables our pins there name, our pin files there); None until loaded
        self._held: dict[str, tuple[frozenset[str], list[str]]] | None = None

    def roots(self) -> set[str]:
        return set(self._load())

    def _load(self) -> dict[str, tuple[frozenset[str], list[str]]]:
        """Our pins in every root a holds record names, read concurrently (once)."""
        if self._held is None:
            holds = self._holds
            self._holds = None  # a reload (after a failed update) reads the records again
            if holds is None:
                holds = list(read_pins(self.fs, self.path).holds.values())
            self._held = dict(zip(holds, files.each(self._read, holds), strict=True))
        return self._held

    def _read(self, other: str) -> tuple[frozenset[str], list[str]]:
        """The tables our pins in `other` name, and our pin files there (damaged ones too, which
        name nothing we can count on)."""
        fs, path = filesystem(other, self.storage_options)
        pins = read_pins(fs, path)
        names: set[str] = set()
        mine = []
        for name in [*pins.references, *pins.damaged]:
            parsed = files.parse_pin_name(name)
            if parsed is not None and parsed.kind == files.REFERENCE and parsed.root_id == self.id:
                mine.append(name)
                names |= pins.references.get(name, frozenset())
        damaged = any(name in pins.damaged for name in mine)
        return (frozenset() if damaged else frozenset(names)), sorted(mine)

    def cover(self, needed: Refs) -> None:
        """Make our pins in each root of `needed` name at least those tables (the DB commits a
        version that references them next), the roots concurrently. Raises OSError when a pin
        cannot be written."""
        held = self._load()

        def cover_root(item: tuple[str, frozenset[str] | set[str]]) -> None:
            other, names = item
            current = held.get(other)
            if current is None:
                current = (frozenset(), []) if self._new_root else self._read(other)
            if not set(names) <= current[0]:
                self._write(other, frozenset(names) | current[0], current[1])
            else:
                held[other] = current

        files.each(cover_root, needed.items())

    def reconcile(self, needed: Refs) -> tuple[list[str], bool]:
        """Shrink our pins to `needed` (every table of other roots the DB can still read):
        rewrite the pins of a root whose set changed, delete them where nothing is needed.
        Returns the roots whose pins changed, and whether every change was made (a failed one
        leaves the old pins, which name more, and is retried next time)."""
        held = self._load()
        changed: list[str] = []
        for other in sorted(set(held) | set(needed)):
            names = frozenset(needed.get(other, ()))
            current = held.get(other) or self._read(other)
            if current[0] == names and len(current[1]) == (1 if names else 0):
                held[other] = current
                continue
            try:
                if names:
                    self._write(other, names, current[1])
                else:
                    self._drop(other, current[1])
            except OSError as e:
                log.warning("%s: could not update its reference pins in %s: %s", self.root,
                            other, e)
                self._held = None  # reload what is there next time
                return changed, False
            changed.append(other)
        return changed, True

    def _write(self, other: str, names: frozenset[str], old: list[str]) -> None:
        """A new pin naming `names` (the holds record first), then the older ones deleted."""
        write_marker(self.fs, self.path, files.holds_record_name(other), {"root": other})
        fs, path = filesystem(other, self.storage_options)
        seq = 1 + max(map(_sequence_number, old), default=0)
        while True:
            name = files.reference_pin_name(self.root, seq)
            try:
                write_pin(fs, path, name, {"root": self.root, "tables": sorted(names)})
                break
            except FileExistsError:
                seq += 1  # another incarnation of this root wrote it: ours is the next
        for stale in old:
            delete_pin(fs, path, stale)
        self._load()[other] = (names, [name])

    def _drop(self, other: str, old: list[str]) -> None:
        """Delete our pins in `other`, then the holds record."""
        fs, path = filesystem(other, self.storage_options)
        for stale in old:
            delete_pin(fs, path, stale)
        delete_pin(self.fs, self.path, files.holds_record_name(other))
        self._load().pop(other, None)


def _sequence_number(pin_name: str) -> int:
    parsed = files.parse_pin_name(pin_name)
    return 0 if parsed is None else parsed.number


def retire(
    root: str, storage_options: Mapping[str, Any], epoch: int, checkpoints: Mapping[int, int]
) -> None:
    """Record that the writer of `epoch` of `root` will never write again, with the checkpoint
    pins of its last manifest (id -> manifest number)."""
    fs, path = filesystem(root, storage_options)
    payload = {"epoch": epoch, "checkpoints": [[c, n] for c, n in sorted(checkpoints.items())]}
    write_marker(fs, path, files.retired_marker_name(epoch), payload)


def retire_newest(root: str, storage_options: Mapping[str, Any]) -> None:
    """Retire the writer of the newest readable manifest of `root` (nothing if none is)."""
    fs, path = filesystem(root, storage_options)
    try:
        latest = ManifestStore(fs, path, MAX_LEVELS).latest()
    except CorruptManifestError:
        return
    if latest is not None:
        retire(root, storage_options, latest.epoch, latest.pins)


def release_checkpoint(root: str, storage_options: Mapping[str, Any], checkpoint_id: int) -> None:
    """Release checkpoint `checkpoint_id` of `root`, a root this process does not write."""
    fs, path = filesystem(root, storage_options)
    write_marker(fs, path, files.released_marker_name(checkpoint_id), {"checkpoint": checkpoint_id})


_registry_lock = threading.Lock()
_collectors: dict[str, tuple[threading.Lock, GarbageCollector]] = {}


def _collector(
    root: str, fs: fsspec.AbstractFileSystem, path: str, grace_s: float
) -> tuple[threading.Lock, GarbageCollector]:
    with _registry_lock:
        entry = _collectors.get(root)
        if entry is None:
            manifests = ManifestStore(fs, path, MAX_LEVELS)
            collector = GarbageCollector(fs, path, manifests, grace_s, manifest_retention=1)
            entry = _collectors[root] = (threading.Lock(), collector)
        entry[1].grace_s = grace_s
        return entry


def collect_retired(
    root: str,
    storage_options: Mapping[str, Any],
    grace_s: float,
    _visited: set[str] | None = None,
) -> GcResult | None:
    """Collect `root` if it is retired (docs/lsm-protocol.md, "Retired roots"), then the roots
    whose reference pins that changed; None when `root` is not retired (or was just visited)."""
    root = root.rstrip("/")
    visited = set() if _visited is None else _visited
    if root in visited:
        return None
    visited.add(root)
    fs, path = filesystem(root, storage_options)
    lock, gc = _collector(root, fs, path, grace_s)
    changed: list[str] = []
    with lock:
        refs = ReferencePins(root, storage_options)

        def shrink(needed: Mapping[str, frozenset[str]]) -> bool:
            done, complete = refs.reconcile(needed)
            changed.extend(done)
            return complete

        result = gc.collect_retired(shrink)
        if result is not None and result.emptied:
            _delete_root(fs, path)
            with _registry_lock:
                _collectors.pop(root, None)
    for other in changed:
        collect_retired(other, storage_options, grace_s, visited)
    return result


def _delete_root(fs: fsspec.AbstractFileSystem, path: str) -> None:
    for _ in range(files.LIST_ATTEMPTS):
        try:
            fs.rm(path, recursive=True)
            log.info("deleted the retired root %s: nothing references it any more", path)
            return
        except FileNotFoundError:
            return
        except RuntimeError:
            # fsspec's memory file system walks its store, which every thread shares, and
            # another thread may change it meanwhile ("dictionary changed size during
            # iteration"). Walk again.
            continue
        except OSError as e:
            log.warning("could not delete the retired root %s (a later collection will): %s", path,
                        e)
            return
    log.warning("could not delete the retired root %s: its file system kept changing", path)


class SharedFiles:
    """What one open DB does about files shared with other roots. Thread-safe. `holds` and
    `new_root`: as for `ReferencePins`."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any],
        grace_s: float,
        holds: Iterable[str] | None = None,
        new_root: bool = False,
    ) -> None:
        self.storage_options = dict(storage_options)
        self.grace_s = grace_s
        self.references = ReferencePins(root, storage_options, holds, new_root)
        self._lock = threading.Lock()
        self._watched: set[str] = set()  # retired roots with garbage waiting out the grace
        self._needed: dict[str, set[str]] = {}  # tables of other roots, as of the last collection

    def cover(self, needed: Refs) -> None:
        """Before the DB's first commit (see `ReferencePins.cover`)."""
        with self._lock:
            self.references.cover(needed)

    def after_collection(
        self, versions: Iterable[Version], kept: Refs
    ) -> list[tuple[str, str]]:
        """After the DB's own collection: shrink its reference pins to what it can still read
        (the tables of other roots that its `versions` in memory and the manifests its
        collection `kept` reference), then collect the retired roots whose pins changed and the
        watched ones. Returns the tables of other roots it no longer references."""
        needed = {root: set(names) for root, names in kept.items()}
        for version in versions:
            for root, names in version.foreign().items():
                needed.setdefault(root, set()).update(names)
        with self._lock:
            try:
                changed, _ = self.references.reconcile(needed)
            except OSError as e:  # reading pins elsewhere failed: the old pins stay, retried
                log.warning("%s: could not check its reference pins: %s", self.references.root, e)
                self.references = ReferencePins(self.references.root, self.storage_options)
                changed = []
            dropped = [
                (root, name)
                for root, names in self._needed.items()
                for name in names - needed.get(root, set())
            ]
            self._needed = needed
            roots = set(changed) | self._watched
        for root in sorted(roots):
            self._collect(root)
        return dropped

    def release_checkpoint(self, root: str, checkpoint_id: int) -> None:
        """Release a checkpoint of another root (an old subtask's, after a rescale), then
        collect that root."""
        release_checkpoint(root, self.storage_options, checkpoint_id)
        self._collect(root)

    def _collect(self, root: str) -> None:
        try:
            result = collect_retired(root, self.storage_options, self.grace_s)
        except (OSError, CorruptManifestError) as e:
            log.warning("collecting the retired root %s failed (retried later): %s", root, e)
            result = GcResult((), (), 1)
        with self._lock:
            if result is None or result.emptied or not result.pending:
                self._watched.discard(root)
            else:
                self._watched.add(root)
