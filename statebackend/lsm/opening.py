"""How an `LsmDB` opens its root: the version and pins it starts from, the markers its first
commit makes obsolete, and the check that every table that version references exists.

The rules are docs/lsm-protocol.md's "Checkpoint pins" (a restore keeps the newest manifest's
pins, less those a release marker released, plus the restored checkpoint's own), "Retired roots"
(a writer that takes a root over ends its retirement) and "Adopting versions of other databases"
(a new root starts from a version that references other roots' tables).
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from statebackend.dfs import filesystem
from statebackend.errors import MissingCheckpointDataError
from statebackend.lsm import files
from statebackend.lsm.manifest import Manifest, ManifestStore
from statebackend.lsm.pins import RootPins, delete_pin
from statebackend.lsm.version import Version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opening:
    version: Version
    pins: dict[int, int]  # checkpoint id -> manifest number
    obsolete_markers: list[str]  # pin files to delete once the first commit is done


def open_version(
    manifests: ManifestStore,
    markers: RootPins,
    root: str,
    storage_options: Mapping[str, Any],
    epoch: int,
    restore: int | None,
    fresh: bool,
    adopt: Version | None,
) -> Opening:
    """What the writer of `epoch` of `root` opens: the version of manifest `restore`, an empty
    one (`fresh`), the `adopt`ed one, or else the newest; with the pins it keeps (`markers`: the
    root's pins, read before the writer chose its epoch). MissingCheckpointDataError when a table
    of a restored or adopted version is missing."""
    latest = manifests.latest()
    released = markers.released
    pins = {c: n for c, n in _last_pins(latest, markers).items() if c not in released}
    obsolete = [files.released_marker_name(c) for c in released]
    obsolete += [files.retired_marker_name(e) for e in markers.retired if e < epoch]
    if adopt is not None:
        check_tables(adopt, root, storage_options, "the adopted versions")
        return Opening(adopt, pins, obsolete)
    if restore is not None:
        base = manifests.read_checkpoint(restore)
        check_tables(base.version, root, storage_options, f"manifest {restore}")
        # The newest manifest knows which checkpoints were released since; keep its pins plus
        # the pin of the version being restored.
        pins.update((c, n) for c, n in base.pins.items() if n == restore)
        return Opening(base.version, pins, obsolete)
    if fresh or latest is None:
        return Opening(Version.empty(manifests.num_levels), pins, obsolete)
    return Opening(latest.version, pins, obsolete)


def _last_pins(latest: Manifest | None, markers: RootPins) -> Mapping[int, int]:
    """The checkpoint pins the root's last writer left: those of its retirement marker, if it
    retired (a retired root's collection may have deleted its newest manifests), else those of
    the newest manifest."""
    retired = max(markers.retired, default=None)
    if retired is not None and (latest is None or retired >= latest.epoch):
        return markers.retired[retired]
    return latest.pins if latest else {}


def check_tables(
    version: Version, root: str, storage_options: Mapping[str, Any], what: str
) -> None:
    """MissingCheckpointDataError unless every table `version` (of the DB at `root`)
    references exists, in `root` or in the other roots it names."""
    wanted = {root: version.names(), **version.foreign()}
    for where, names in wanted.items():
        fs, path = filesystem(where, storage_options)
        missing = names.difference(files.list_tables(fs, path))
        if missing:
            raise MissingCheckpointDataError(
                f"{root}: {what} reference tables missing in {where}: {sorted(missing)[:5]}"
            )


def delete_markers(fs: fsspec.AbstractFileSystem, root_path: str, names: list[str]) -> None:
    """Delete obsolete markers (best effort: one left behind changes nothing)."""
    for name in names:
        try:
            delete_pin(fs, root_path, name)
        except OSError as e:
            log.warning("%s: could not delete the marker %s: %s", root_path, name, e)
