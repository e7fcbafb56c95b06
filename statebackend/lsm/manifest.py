"""Manifest versions on the DFS, writer epochs and fencing.

Each committed version of a DB is one immutable file `ROOT/manifest/<number>.manifest` (the name
and folder: `files.manifest_path`) holding the whole version, not a delta, so any single file is
enough to open the DB. Its format:

    payload  msgpack map {format, number, epoch, writer, created_ms, levels, pins}
    footer   magic b"LSMMANI1" | payload length u64-be | xxh3-64(payload) u64-be

`levels` lists each level's `TableMeta` dicts (a reference to another root or a clipped one also
has `root`, `clip_start`, `clip_end`; see meta.py); `pins` maps checkpoint id -> manifest number.
A `ManifestStore` only reads until a `ManifestWriter` opens it: reading another DB's manifests
never writes there. A `ManifestScan` is what opening needs of them: the numbers listed and the
newest EPOCH_SCAN manifests, read at once (`ManifestStore.scan`, or with the root's other files
by `opening`).

The rules this module implements are stated in docs/lsm-protocol.md: how the current version is
found and how a damaged manifest is skipped ("Manifests"), how a writer's epoch is chosen and how
a zombie writer is fenced ("Writer epochs and fencing"), and what a pin keeps ("Checkpoint pins").
"""

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import fsspec
import msgpack
import xxhash

from statebackend.dfs import FileRef, verify
from statebackend.errors import CorruptCheckpointError, MissingCheckpointDataError
from statebackend.lsm.files import (
    create_file,
    list_names,
    manifest_dir,
    manifest_name,
    manifest_path,
    parse_manifest_name,
    read_files,
)
from statebackend.lsm.version import Version

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"LSMMANI1"
FOOTER_SIZE = len(MAGIC) + 16
# How many of the newest manifests are read to find the highest epoch when a writer opens.
EPOCH_SCAN = 16


class CorruptManifestError(Exception):
    """A manifest file that is truncated, fails its checksum or cannot be decoded."""


class FencedError(RuntimeError):
    """This writer's epoch is no longer current: a newer writer opened the same DB."""


@dataclass(frozen=True)
class Manifest:
    """One committed version of a DB."""

    number: int
    epoch: int
    writer: str
    version: Version
    pins: Mapping[int, int] = field(default_factory=dict)  # checkpoint id -> manifest number
    created_ms: int = 0


def encode(m: Manifest) -> bytes:
    payload = msgpack.packb(
        {
            "format": FORMAT,
            "number": m.number,
            "epoch": m.epoch,
            "writer": m.writer,
            "created_ms": m.created_ms,
            "levels": m.version.to_list(),
            "pins": [[c, n] for c, n in sorted(m.pins.items())],
        },
        use_bin_type=True,
    )
    footer = (
        MAGIC
        + len(payload).to_bytes(8, "big")
        + xxhash.xxh3_64_intdigest(payload).to_bytes(8, "big")
    )
    return payload + footer


def decode(data: bytes, name: str, num_levels: int) -> Manifest:
    if len(data) < FOOTER_SIZE or data[-FOOTER_SIZE:][: len(MAGIC)] != MAGIC:
        raise CorruptManifestError(f"manifest {name} is truncated ({len(data)} bytes, no footer)")
    footer = data[-FOOTER_SIZE + len(MAGIC) :]
    length = int.from_bytes(footer[:8], "big")
    checksum = int.from_bytes(footer[8:], "big")
    payload = data[:-FOOTER_SIZE]
    if length != len(payload) or xxhash.xxh3_64_intdigest(payload) != checksum:
        raise CorruptManifestError(f"manifest {name} fails its length or xxh3 checksum")
    try:
        d = msgpack.unpackb(payload, raw=False)
        if d["format"] != FORMAT:
            raise CorruptManifestError(f"manifest {name} has unknown format {d['format']}")
        return Manifest(
            number=int(d["number"]),
            epoch=int(d["epoch"]),
            writer=str(d["writer"]),
            version=Version.from_list(d["levels"], num_levels),
            pins={int(c): int(n) for c, n in d["pins"]},
            created_ms=int(d["created_ms"]),
        )
    except CorruptManifestError:
        raise
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as e:
        raise CorruptManifestError(f"manifest {name} cannot be decoded: {e}") from e


@dataclass(frozen=True)
class ManifestScan:
    """The manifests of a root as one listing found them: every number, ascending, and the newest
    EPOCH_SCAN read (each a Manifest, or the FileNotFoundError or CorruptManifestError of its
    read: deleted since the listing, or damaged)."""

    numbers: list[int]
    newest: Mapping[int, Manifest | Exception]

    def max_epoch(self) -> int:
        """The highest epoch among the newest manifests (0 for a new DB)."""
        return max((m.epoch for m in self.newest.values() if isinstance(m, Manifest)), default=0)


def verified(ref: FileRef, data: bytes | None) -> bytes:
    """`data`, the bytes read of the manifest a snapshot handle names (`ref`; None: the file is
    missing), once they verify against it; MissingCheckpointDataError or CorruptCheckpointError
    otherwise."""
    if data is None:
        raise MissingCheckpointDataError(f"checkpoint file {ref.path} is missing")
    verify(ref, data)
    return data


class ManifestStore:
    """Reads, writes, lists and deletes the manifest files under ROOT/manifest/."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root_path: str, num_levels: int) -> None:
        self.fs = fs
        self.root_path = root_path
        self.dir = manifest_dir(root_path)
        self.num_levels = num_levels

    def path(self, number: int) -> str:
        return manifest_path(self.root_path, number)

    def numbers(self, listed: Iterable[str] | None = None) -> list[int]:
        """All manifest numbers present, ascending (valid or not), among the file names `listed`
        in the manifest folder (None: list it now)."""
        names = list_names(self.fs, self.dir) if listed is None else listed
        return sorted(n for n in map(parse_manifest_name, names) if n is not None)

    def read(self, number: int) -> Manifest:
        """Raises FileNotFoundError or CorruptManifestError."""
        return self.parse(number, self.fs.cat_file(self.path(number)))

    def parse(self, number: int, data: bytes) -> Manifest:
        """Manifest `number` from its bytes; raises CorruptManifestError."""
        m = decode(data, manifest_name(number), self.num_levels)
        if m.number != number:
            raise CorruptManifestError(f"manifest {manifest_name(number)} claims number {m.number}")
        return m

    def checkpoint(self, number: int, data: bytes | None, ref: FileRef | None) -> Manifest:
        """Pinned manifest `number` to restore, from its bytes (None: it is missing), verified
        against the handle's reference `ref` when given; raises the RestoreError a checkpoint
        restore expects."""
        if ref is not None:
            data = verified(ref, data)
        elif data is None:
            raise MissingCheckpointDataError(f"checkpoint file {self.path(number)} is missing")
        try:
            return self.parse(number, data)
        except CorruptManifestError as e:
            raise CorruptCheckpointError(str(e)) from e

    def scan_numbers(self, numbers: list[int]) -> list[int]:
        """Which of the listed `numbers` (ascending) a scan reads: the newest EPOCH_SCAN."""
        return numbers[-EPOCH_SCAN:]

    def scanned(self, numbers: list[int], contents: Mapping[int, bytes | None]) -> ManifestScan:
        """The scan of the listed `numbers`, from the `contents` of `scan_numbers(numbers)`
        (None: deleted since the listing)."""
        newest: dict[int, Manifest | Exception] = {}
        for number in self.scan_numbers(numbers):
            data = contents[number]
            try:
                if data is None:
                    raise FileNotFoundError(self.path(number))
                newest[number] = self.parse(number, data)
            except (FileNotFoundError, CorruptManifestError) as e:
                newest[number] = e
        return ManifestScan(numbers, newest)

    def scan(self) -> ManifestScan:
        """List the manifests and read the newest EPOCH_SCAN at once (one round trip)."""
        numbers = self.numbers()
        wanted = self.scan_numbers(numbers)
        contents = read_files(self.fs, [self.path(n) for n in wanted])
        return self.scanned(numbers, dict(zip(wanted, contents, strict=True)))

    def latest(self, scan: ManifestScan | None = None) -> Manifest | None:
        """The highest-numbered good manifest; None for a new DB. `scan`: what a scan found
        (None: scan now); manifests older than it are read one by one if none of it is good.

        Skips (with a warning) newer manifests that are truncated or corrupt. Raises
        CorruptManifestError when manifests exist but none is readable.
        """
        scan = self.scan() if scan is None else scan
        for number in reversed(scan.numbers):
            found = scan.newest.get(number)
            try:
                if isinstance(found, Exception):
                    raise found
                return found if found is not None else self.read(number)
            except FileNotFoundError:
                continue  # deleted by a concurrent cleanup between listing and reading
            except CorruptManifestError as e:
                log.warning("skipping manifest %s, falling back to the previous one: %s", number, e)
        if scan.numbers:
            raise CorruptManifestError(
                f"no readable manifest among {len(scan.numbers)} in {self.dir}"
            )
        return None

    def max_epoch(self) -> int:
        """The highest epoch among the newest manifests (0 for a new DB)."""
        return self.scan().max_epoch()

    def create(self, m: Manifest) -> None:
        """Write `m` with an exclusive create; FileExistsError when its number is taken."""
        create_file(self.fs, self.path(m.number), encode(m))

    def delete(self, number: int) -> None:
        self.fs.rm_file(self.path(number))


class ManifestWriter:
    """Commits versions for one writer epoch, fenced as docs/lsm-protocol.md states.

    Not thread-safe: the DB serializes commits.
    """

    def __init__(self, store: ManifestStore, epoch: int, next_number: int) -> None:
        self.store = store
        self.epoch = epoch
        self.writer = uuid.uuid4().hex
        self._next = next_number  # invariant: every number below it was attempted or seen taken
        self.fenced: FencedError | None = None

    @classmethod
    def open(
        cls, store: ManifestStore, above: int = 0, scan: ManifestScan | None = None
    ) -> "ManifestWriter":
        """A writer with an epoch above every epoch seen (among the newest manifests: `scan`, or
        a scan now), and above `above` (the epochs recorded elsewhere, e.g. by retirement
        markers); it must commit before anything else."""
        scan = store.scan() if scan is None else scan
        epoch = max(scan.max_epoch(), above) + 1
        return cls(store, epoch, (scan.numbers[-1] + 1) if scan.numbers else 1)

    def commit(
        self, version: Version, pins: Mapping[int, int], pin_self: int | None = None
    ) -> Manifest:
        """Write the next manifest. `pin_self` adds a pin of that checkpoint id to this very number.

        An I/O error propagates and consumes the number (a partial file may exist), so a retry
        writes the next one. Raises FencedError when a newer writer owns the DB.
        """
        if self.fenced is not None:
            raise self.fenced
        while True:
            number = self._next
            self._next += 1
            all_pins = dict(pins)
            if pin_self is not None:
                all_pins[pin_self] = number
            m = Manifest(
                number, self.epoch, self.writer, version, all_pins, time.time_ns() // 10**6
            )
            try:
                self.store.create(m)
                return m
            except FileExistsError:
                self._check_not_fenced(number)

    def _check_not_fenced(self, number: int) -> None:
        """Someone else took `number`: continue past an older epoch's zombie, else we are fenced."""
        try:
            other = self.store.read(number)
        except (FileNotFoundError, CorruptManifestError) as e:
            reason = f"manifest {number} was taken by another writer and is unreadable ({e})"
        else:
            if other.epoch < self.epoch:
                log.warning(
                    "manifest %s was written by an older epoch %s; skipping it", number, other.epoch
                )
                return
            reason = (
                f"manifest {number} was written by epoch {other.epoch} (this writer: {self.epoch})"
            )
        self.fenced = FencedError(
            f"LSM DB {self.store.dir}: fenced, a newer writer owns it: {reason}"
        )
        raise self.fenced
