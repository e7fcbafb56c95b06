"""How an `LsmDB` opens its root: the writer's epoch, the version and pins it starts from, the
markers its first commit makes obsolete, and the check that every table that version references
exists.

The rules are docs/lsm-protocol.md's "Writer epochs and fencing" (the epoch), "Checkpoint pins"
(a restore keeps the newest manifest's pins, less those a release marker released, plus the
restored checkpoint's own), "Retired roots" (a writer that takes a root over ends its
retirement) and "Adopting versions of other databases" (a new root starts from a version that
references other roots' tables).

Opening reads a root in two round trips on an object store: one listing of its folders (each
listed once, concurrently), then its pin files, its newest manifests and the manifest to restore,
all in one concurrent read. The tables of other roots a version references are listed
concurrently, one listing per root. An adopting DB's root is new (`files.new_adopting_root`), so
nothing is read there: it starts at epoch 1 with manifest 1.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from statebackend.dfs import FileRef, filesystem
from statebackend.errors import MissingCheckpointDataError
from statebackend.lsm import files
from statebackend.lsm.manifest import Manifest, ManifestStore, ManifestWriter
from statebackend.lsm.pins import RootPins, delete_pin, parse_pins, pin_names
from statebackend.lsm.version import Version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opening:
    writer: ManifestWriter  # of the epoch the DB opens with; it commits before anything else
    version: Version
    pins: dict[int, int]  # checkpoint id -> manifest number
    obsolete_markers: list[str]  # pin files to delete once the first commit is done
    holds: list[str]  # the roots this root holds reference pins in (its holds records)


def open_root(
    manifests: ManifestStore,
    root: str,
    storage_options: Mapping[str, Any],
    restore: int | None,
    restore_ref: FileRef | None,
    fresh: bool,
    adopt: Version | None,
) -> Opening:
    """How the writer of `root` opens it: with the version of manifest `restore` (verified
    against the handle's reference to it, `restore_ref`, when given), an empty one (`fresh`),
    the `adopt`ed one in a new root, or else the newest; with the pins it keeps.
    MissingCheckpointDataError or CorruptCheckpointError when the manifest to restore is missing
    or damaged, MissingCheckpointDataError when a table of a restored or adopted version is."""
    if adopt is not None:
        check_tables(adopt, root, storage_options, "the adopted versions")
        return Opening(ManifestWriter(manifests, 1, 1), adopt, {}, [], [])
    fs, path = manifests.fs, manifests.root_path
    folders = [files.manifest_dir(path), files.pins_dir(path)]
    if restore is not None:
        folders.append(files.tables_dir(path))
    listed = files.each(lambda folder: files.list_names(fs, folder), folders)
    numbers = manifests.numbers(listed[0])
    names = pin_names(listed[1])
    scanned = manifests.scan_numbers(numbers)
    wanted = scanned + ([restore] if restore is not None and restore not in scanned else [])
    contents = files.read_files(
        fs, [files.pin_path(path, n) for n in names] + [manifests.path(n) for n in wanted]
    )
    markers = parse_pins(path, dict(zip(names, contents[: len(names)], strict=True)))
    manifest_bytes = dict(zip(wanted, contents[len(names) :], strict=True))
    base = None
    if restore is not None:
        base = manifests.checkpoint(restore, manifest_bytes[restore], restore_ref)
        check_tables(base.version, root, storage_options, f"manifest {restore}", listed[2])
    scan = manifests.scanned(numbers, manifest_bytes)
    writer = ManifestWriter.open(manifests, max(markers.retired, default=0), scan)
    latest = manifests.latest(scan)
    released = markers.released
    pins = {c: n for c, n in _last_pins(latest, markers).items() if c not in released}
    obsolete = [files.released_marker_name(c) for c in released]
    obsolete += [files.retired_marker_name(e) for e in markers.retired if e < writer.epoch]
    holds = list(markers.holds.values())
    if base is not None:
        # The newest manifest knows which checkpoints were released since; keep its pins plus
        # the pin of the version being restored.
        pins.update((c, n) for c, n in base.pins.items() if n == restore)
        return Opening(writer, base.version, pins, obsolete, holds)
    if fresh or latest is None:
        return Opening(writer, Version.empty(manifests.num_levels), pins, obsolete, holds)
    return Opening(writer, latest.version, pins, obsolete, holds)


def _last_pins(latest: Manifest | None, markers: RootPins) -> Mapping[int, int]:
    """The checkpoint pins the root's last writer left: those of its retirement marker, if it
    retired (a retired root's collection may have deleted its newest manifests), else those of
    the newest manifest."""
    retired = max(markers.retired, default=None)
    if retired is not None and (latest is None or retired >= latest.epoch):
        return markers.retired[retired]
    return latest.pins if latest else {}


def check_tables(
    version: Version,
    root: str,
    storage_options: Mapping[str, Any],
    what: str,
    listed: Iterable[str] | None = None,
) -> None:
    """MissingCheckpointDataError unless every table `version` (of the DB at `root`)
    references exists, in `root` (whose tables are `listed` already, or else listed now) or in
    the other roots it names (listed concurrently)."""
    wanted = {root: version.names(), **version.foreign()}
    found: dict[str, Iterable[str]] = {} if listed is None else {root: listed}
    to_list = [where for where, names in wanted.items() if names and where not in found]

    def list_tables(where: str) -> list[str]:
        fs, path = filesystem(where, storage_options)
        return files.list_tables(fs, path)

    found.update(zip(to_list, files.each(list_tables, to_list), strict=True))
    for where, names in wanted.items():
        missing = names.difference(found.get(where, ()))
        if missing:
            raise MissingCheckpointDataError(
                f"{root}: {what} reference tables missing in {where}: {sorted(missing)[:5]}"
            )


def delete_markers(fs: fsspec.AbstractFileSystem, root_path: str, names: list[str]) -> None:
    """Delete obsolete markers, concurrently (best effort: one left behind changes nothing)."""

    def delete(name: str) -> None:
        try:
            delete_pin(fs, root_path, name)
        except OSError as e:
            log.warning("%s: could not delete the marker %s: %s", root_path, name, e)

    files.each(delete, names)
