"""Pin files: the immutable files in `ROOT/pins/` that keep tables of a root alive, or record that
a checkpoint pin or a writer is gone (docs/lsm-protocol.md, "Pin files"). Names and paths come
from `files`.

Each fact is one file, created once (exclusive create) and deleted to let go; a file is never
modified. Format, as a manifest's:

    payload  msgpack map, by kind:
             ref        {"root": URL of the referencing DB, "tables": [table names]}
             holds      {"root": URL of the root the DB holds reference pins in}
             savepoint  {"manifest": manifest number, "savepoint": URL of the savepoint}
             released   {"checkpoint": checkpoint id}
             retired    {"epoch": epoch, "checkpoints": [[checkpoint id, manifest number], ...]}
    footer   magic b"LSMPIN01" | payload length u64-be | xxh3-64(payload) u64-be

`read_pins` reads every pin of a root (all at once: one round trip on an object store), and
`parse_pins` decodes pins that opening a DB read with its manifests; a file that does not
verify (being written, or left half-written by a crash) is reported as damaged, never guessed
at.
"""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import msgpack
import xxhash

from statebackend.lsm import files

log = logging.getLogger(__name__)

MAGIC = b"LSMPIN01"
FOOTER_SIZE = len(MAGIC) + 16


class DamagedPinError(ValueError):
    """A pin file that is truncated, fails its checksum or does not decode."""


def encode(payload: Mapping[str, Any]) -> bytes:
    data = msgpack.packb(dict(payload), use_bin_type=True)
    digest = xxhash.xxh3_64_intdigest(data).to_bytes(8, "big")
    return data + MAGIC + len(data).to_bytes(8, "big") + digest


def decode(data: bytes, name: str) -> dict[str, Any]:
    if len(data) < FOOTER_SIZE or data[-FOOTER_SIZE:][: len(MAGIC)] != MAGIC:
        raise DamagedPinError(f"pin {name} is truncated ({len(data)} bytes, no footer)")
    footer = data[-FOOTER_SIZE + len(MAGIC) :]
    payload = data[:-FOOTER_SIZE]
    if int.from_bytes(footer[:8], "big") != len(payload) or xxhash.xxh3_64_intdigest(
        payload
    ) != int.from_bytes(footer[8:], "big"):
        raise DamagedPinError(f"pin {name} fails its length or xxh3 checksum")
    try:
        value = msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise DamagedPinError(f"pin {name} does not decode: {e}") from e
    if not isinstance(value, dict):
        raise DamagedPinError(f"pin {name} is not a map")
    return value


def write_pin(
    fs: fsspec.AbstractFileSystem, root: str, name: str, payload: Mapping[str, Any]
) -> None:
    """Create pin `name` below `root`; FileExistsError when it exists (a pin is never rewritten)."""
    files.create_file(fs, files.pin_path(root, name), encode(payload))


def write_marker(fs: fsspec.AbstractFileSystem, root: str, name: str, payload: Mapping) -> None:
    """Create a release or retirement marker; one that exists already is the same fact."""
    try:
        write_pin(fs, root, name, payload)
    except FileExistsError:
        pass


def delete_pin(fs: fsspec.AbstractFileSystem, root: str, name: str) -> bool:
    """Delete pin `name` below `root`; False when it was gone already."""
    try:
        fs.rm_file(files.pin_path(root, name))
    except FileNotFoundError:
        return False
    return True


@dataclass
class RootPins:
    """The pins of one root, as read by `read_pins`."""

    references: dict[str, frozenset[str]] = field(default_factory=dict)  # ref pin -> tables
    holds: dict[str, str] = field(default_factory=dict)  # holds record -> the other root's URL
    savepoints: dict[str, int] = field(default_factory=dict)  # savepoint pin -> manifest number
    released: set[int] = field(default_factory=set)  # checkpoint ids whose pins are released
    # epoch whose writer is gone for good -> its checkpoint pins then (id -> manifest number)
    retired: dict[int, dict[int, int]] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)  # pin files that do not verify

    def referenced(self) -> set[str]:
        """The tables any reference pin names."""
        return set().union(*self.references.values())

    def holds_anything(self) -> bool:
        """Whether a reference or savepoint pin, or a damaged pin, may keep something."""
        return bool(self.references or self.savepoints or self.damaged)


def read_pins(fs: fsspec.AbstractFileSystem, root: str) -> RootPins:
    """Every pin of `root` (a path within `fs`), read at once; unknown file names are ignored."""
    names = pin_names(files.list_names(fs, files.pins_dir(root)))
    contents = files.read_files(fs, [files.pin_path(root, name) for name in names])
    return parse_pins(root, dict(zip(names, contents, strict=True)))


def pin_names(listed: Iterable[str]) -> list[str]:
    """The pin files among the file names `listed` in a root's pins folder."""
    return [name for name in listed if files.parse_pin_name(name) is not None]


def parse_pins(root: str, contents: Mapping[str, bytes | None]) -> RootPins:
    """The pins of `root` from the bytes of its pin files by name (None: deleted since the
    listing, so that pin let go)."""
    pins = RootPins()
    for name, data in contents.items():
        parsed = files.parse_pin_name(name)
        if parsed is None or data is None:
            continue
        try:
            _add(pins, name, parsed, decode(data, name))
        except (DamagedPinError, KeyError, TypeError, ValueError) as e:
            log.warning("%s: pin %s is damaged or being written: %s", root, name, e)
            pins.damaged.append(name)
    return pins


def _add(pins: RootPins, name: str, parsed: files.PinName, payload: dict[str, Any]) -> None:
    if parsed.kind == files.REFERENCE:
        tables = payload["tables"]
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise ValueError(f"pin {name}: tables is not a list of names")
        pins.references[name] = frozenset(tables)
    elif parsed.kind == files.HOLDS:
        root = payload["root"]
        if not isinstance(root, str) or not root:
            raise ValueError(f"pin {name}: root is not a URL")
        pins.holds[name] = root
    elif parsed.kind == files.SAVEPOINT:
        pins.savepoints[name] = int(payload["manifest"])
    elif parsed.kind == files.RELEASED:
        pins.released.add(parsed.number)
    else:
        checkpoints = payload["checkpoints"]
        if not isinstance(checkpoints, list):
            raise ValueError(f"pin {name}: checkpoints is not a list")
        pins.retired[parsed.number] = {int(c): int(n) for c, n in checkpoints}
