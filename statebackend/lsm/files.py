"""The files of an LSM DB: where they live, what they are called, and which may be deleted.

This module is the one place that knows the directory layout, builds and parses every file name,
decides whether a name is protected by an in-flight writer, deletes a compaction's outputs and
checks a `CompactionResult` against its spec. The rules it implements (naming and uniqueness,
protection, install or delete, garbage collection, epochs, pins) are stated in
docs/lsm-protocol.md; other modules refer to that page instead of restating them.

It also owns how the LSM talks to the DFS in few round trips, since on an object store each
request is one: `list_names` (one listing of a folder), `read_files` (several files in one
concurrent read), `create_file` and `open_for_writing` (folders made only where the file system
needs them: object stores have none), and `each` (independent sequences of requests, e.g. one
per root, run concurrently).

Layout below a DB root (an fsspec URL, or a path within its file system; functions taking `root`
accept either):

    ROOT/tables/<table name>          immutable table files (docs/lsm-table-format.md)
    ROOT/manifest/<number>.manifest   immutable manifest versions (manifest.py)
    ROOT/pins/<pin name>              immutable pin files (pins.py)

A DB of a rescaled (or adopted) state gets a fresh root next to the root its subtask would use,
`<base>-<hex 32>` (`new_adopting_root`); `is_root_of` tells a subtask's own roots from others.

Names (`hex` is lower-case hexadecimal of the given length, drawn at random):

    flush table         <epoch:06d>-f<seq:06d>-<hex 12>.sst
    compaction prefix   <epoch:06d>-c<compaction id: hex 16>-
    service run prefix  <compaction prefix>r<run: hex 8>s<piece>-
    compaction output   <prefix><token: hex 16>-<seq:04d>.sst  (prefix: either prefix above)
    manifest            <number:012d>.manifest
    reference pin       ref-<root id: hex 32>-<seq:06d>.pin   (root id: `root_id` of the
                        referencing DB's root URL)
    holds record        holds-<root id: hex 32>.pin   (in the referencing DB's root: it holds
                        reference pins in the root of that id)
    savepoint pin       savepoint-<token: hex 32>.pin
    release marker      released-<checkpoint id>.pin
    retirement marker   retired-<epoch:06d>.pin
    savepoint manifest  lsm-<token: hex 32>.manifest   (in the savepoint's directory)

Specs built elsewhere (tests, benchmarks) may use any plain prefix; outputs are then still named
`<prefix><token>-<seq>.sst`, and everything here that works by prefix works with them.
"""

import logging
import math
import posixpath
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
import xxhash

from statebackend.lsm.table import FOOTER_SIZE

if TYPE_CHECKING:
    from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec

log = logging.getLogger(__name__)

TABLES_DIR = "tables"
MANIFEST_DIR = "manifest"
PINS_DIR = "pins"
TABLE_SUFFIX = ".sst"
MANIFEST_SUFFIX = ".manifest"
PIN_SUFFIX = ".pin"
# Kinds of pin files (`parse_pin_name`).
REFERENCE = "ref"
HOLDS = "holds"
SAVEPOINT = "savepoint"
RELEASED = "released"
RETIRED = "retired"
MANIFEST_DIGITS = 12
FLUSH = "flush"
COMPACTION = "compaction"
LIST_ATTEMPTS = 5
MAX_CONCURRENT_CALLS = 32  # threads of one `each`

_EPOCH = r"(?P<epoch>\d{6,})"
_FLUSH_NAME = re.compile(_EPOCH + r"-f(?P<seq>\d{6,})-[0-9a-f]{12}\.sst")
_COMPACTION_PREFIX = _EPOCH + r"-c(?P<compaction_id>[0-9a-f]{16})-"
# What follows a compaction's prefix in the name of one of its outputs.
_OUTPUT_TAIL = r"(?:r(?P<run>[0-9a-f]{8})s(?P<piece>\d+)-)?[0-9a-f]{16}-(?P<seq>\d{4,})\.sst"
_OUTPUT_NAME = re.compile(_COMPACTION_PREFIX + _OUTPUT_TAIL)
_TAIL = re.compile(_OUTPUT_TAIL)
_MANIFEST_NAME = re.compile(rf"\d{{{MANIFEST_DIGITS}}}" + re.escape(MANIFEST_SUFFIX))
_PIN_NAME = re.compile(
    r"(?:ref-(?P<ref>[0-9a-f]{32})-(?P<seq>\d{6,})|holds-(?P<holds>[0-9a-f]{32})"
    r"|savepoint-(?P<savepoint>[0-9a-f]{32})"
    r"|released-(?P<released>\d+)|retired-(?P<retired>\d{6,}))\.pin"
)
_ADOPTING_SUFFIX = re.compile(r"-[0-9a-f]{32}")

T = TypeVar("T")
R = TypeVar("R")


# ----------------------------------------------------------------------------------- layout


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def tables_dir(root: str) -> str:
    return _join(root, TABLES_DIR)


def table_path(root: str, name: str) -> str:
    return _join(root, TABLES_DIR, name)


def manifest_dir(root: str) -> str:
    return _join(root, MANIFEST_DIR)


def manifest_path(root: str, number: int) -> str:
    return _join(root, MANIFEST_DIR, manifest_name(number))


def table_label(root: str, name: str) -> str:
    """How readers, caches and errors name a table that a DB references: its name when it is in
    the DB's own root (root ""), else its path in its root."""
    return table_path(root, name) if root else name


def pins_dir(root: str) -> str:
    return _join(root, PINS_DIR)


def pin_path(root: str, name: str) -> str:
    return _join(root, PINS_DIR, name)


def new_adopting_root(base: str) -> str:
    """A fresh root for a DB that adopts other DBs' versions, next to `base` (the root its
    subtask would use): it never collides with an old DB's root."""
    return f"{base.rstrip('/')}-{secrets.token_hex(16)}"


def is_root_of(base: str, root: str) -> bool:
    """Whether `root` is `base` or one of the adopting roots made from it (`new_adopting_root`)."""
    base, root = base.rstrip("/"), root.rstrip("/")
    return root == base or (
        root.startswith(base) and _ADOPTING_SUFFIX.fullmatch(root[len(base) :]) is not None
    )


# ----------------------------------------------------------------------------------- names


def flush_table_name(epoch: int, seq: int) -> str:
    """The name of the `seq`th table flushed by the writer of `epoch`."""
    return f"{epoch:06d}-f{seq:06d}-{secrets.token_hex(6)}{TABLE_SUFFIX}"


def new_compaction_id() -> str:
    return secrets.token_hex(8)


def compaction_prefix(epoch: int, compaction_id: str) -> str:
    """The prefix of every output of compaction `compaction_id` of the writer of `epoch`."""
    return f"{epoch:06d}-c{compaction_id}-"


def new_run_token() -> str:
    """A compaction service run's token, for `service_run_prefix`."""
    return secrets.token_hex(4)


def service_run_prefix(prefix: str, run: str, piece: int) -> str:
    """The prefix of piece `piece` of a compaction service's run `run` of the spec of `prefix`:
    inside `prefix` (protected with it), and unique to that run and piece."""
    return f"{prefix}r{run}s{piece}-"


def new_output_token() -> str:
    """A token drawn once per run of a compaction, for `compaction_output_name`."""
    return secrets.token_hex(8)


def compaction_output_name(prefix: str, token: str, seq: int) -> str:
    """The name of output `seq` of the run `token` of a compaction writing under `prefix`."""
    return f"{prefix}{token}-{seq:04d}{TABLE_SUFFIX}"


def manifest_name(number: int) -> str:
    return f"{number:0{MANIFEST_DIGITS}d}{MANIFEST_SUFFIX}"


def root_id(root: str) -> str:
    """The id of a DB root in the names of its reference pins: xxh3-128 of its URL."""
    return xxhash.xxh3_128_hexdigest(root.rstrip("/").encode())


def reference_pin_name(referencing_root: str, seq: int) -> str:
    """The `seq`th reference pin that the DB at `referencing_root` writes in another root."""
    return f"{REFERENCE}-{root_id(referencing_root)}-{seq:06d}{PIN_SUFFIX}"


def holds_record_name(other_root: str) -> str:
    """The record, in a DB's own root, that it holds reference pins in `other_root`."""
    return f"{HOLDS}-{root_id(other_root)}{PIN_SUFFIX}"


def new_savepoint_token() -> str:
    return secrets.token_hex(16)


def savepoint_pin_name(token: str) -> str:
    return f"{SAVEPOINT}-{token}{PIN_SUFFIX}"


def savepoint_manifest_name(token: str) -> str:
    """The name of a savepoint's copy of its pinned manifest, in the savepoint's directory."""
    return f"lsm-{token}{MANIFEST_SUFFIX}"


def released_marker_name(checkpoint_id: int) -> str:
    return f"{RELEASED}-{checkpoint_id}{PIN_SUFFIX}"


def retired_marker_name(epoch: int) -> str:
    return f"{RETIRED}-{epoch:06d}{PIN_SUFFIX}"


@dataclass(frozen=True)
class PinName:
    """What a pin file's name says: its kind and, by kind, the referencing root's id and the
    pin's sequence number (ref), the other root's id (holds), the savepoint token, the
    checkpoint id (released) or the epoch (retired)."""

    kind: str
    root_id: str | None = None
    number: int = 0  # ref: seq; released: checkpoint id; retired: epoch
    token: str | None = None


def parse_pin_name(name: str) -> PinName | None:
    """The parts of a pin file name built here; None for any other name."""
    m = _PIN_NAME.fullmatch(name)
    if m is None:
        return None
    if m["ref"] is not None:
        return PinName(REFERENCE, root_id=m["ref"], number=int(m["seq"]))
    if m["holds"] is not None:
        return PinName(HOLDS, root_id=m["holds"])
    if m["savepoint"] is not None:
        return PinName(SAVEPOINT, token=m["savepoint"])
    if m["released"] is not None:
        return PinName(RELEASED, number=int(m["released"]))
    return PinName(RETIRED, number=int(m["retired"]))


@dataclass(frozen=True)
class TableName:
    """What a table name built here says about its file."""

    kind: str  # FLUSH or COMPACTION
    epoch: int  # of the writer that wrote it (for a compaction: that scheduled it)
    seq: int  # a flush's number within its writer; an output's number within its run
    compaction_id: str | None = None
    run: str | None = None  # set when a compaction service wrote it: its run token ...
    piece: int | None = None  # ... and the subcompaction


def parse_table_name(name: str) -> TableName | None:
    """The parts of a table name this module builds; None for any other name."""
    m = _FLUSH_NAME.fullmatch(name)
    if m is not None:
        return TableName(FLUSH, int(m["epoch"]), int(m["seq"]))
    m = _OUTPUT_NAME.fullmatch(name)
    if m is None:
        return None
    piece = m["piece"]
    return TableName(
        COMPACTION,
        int(m["epoch"]),
        int(m["seq"]),
        m["compaction_id"],
        m["run"],
        None if piece is None else int(piece),
    )


def parse_manifest_name(name: str) -> int | None:
    """The number of a manifest file name; None for any other name."""
    if _MANIFEST_NAME.fullmatch(name) is None:
        return None
    return int(name[:MANIFEST_DIGITS])


def is_output_of(prefix: str, name: str) -> bool:
    """Whether `name` is the name of an output of a compaction writing under `prefix` (also of a
    compaction service run of it)."""
    return name.startswith(prefix) and _TAIL.fullmatch(name[len(prefix) :]) is not None


def is_plain_name(name: str) -> bool:
    """A non-empty file name that stays inside its folder on every file system."""
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in ("/", "\\", "\x00"))
    )


def is_protected(name: str, prefixes: Iterable[str]) -> bool:
    """Whether in-flight work writing under one of `prefixes` (compaction prefixes and the names
    of tables being flushed) owns the table `name`, so the garbage collector must keep it."""
    return name.startswith(tuple(prefixes))


def written_by_newer_epoch(name: str, epoch: int) -> bool:
    """Whether `name` was written by a writer of an epoch above `epoch` (a newer incarnation)."""
    parsed = parse_table_name(name)
    return parsed is not None and parsed.epoch > epoch


# ----------------------------------------------------------------------------------- files


def list_names(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """The file names in `directory` as the store has them now ([] when it does not exist).

    Listing caches (s3fs keeps one) are dropped first: other processes write here too.
    """
    fs.invalidate_cache(directory)
    for _ in range(LIST_ATTEMPTS - 1):
        try:
            return _names(fs, directory)
        except KeyError:
            # fsspec's memory file system lists a copy of its keys, then looks each one up: a
            # file deleted by another thread in between raises KeyError. List again.
            continue
    return _names(fs, directory)


def _names(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(directory, detail=False)]
    except FileNotFoundError:
        return []


def list_tables(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """The names of the table files below `root` (a path within `fs`)."""
    return list_names(fs, tables_dir(root))


def each(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`function` of every item, in order, the calls made concurrently on threads: the requests
    of an async file system (an object store's) then overlap, so independent sequences of
    requests (one per root, one per file) take the round trips of the longest one. The first
    error raises, once every call has returned."""
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    workers = min(len(items), MAX_CONCURRENT_CALLS)
    with ThreadPoolExecutor(workers, thread_name_prefix="lsm-io") as pool:
        futures = [pool.submit(function, item) for item in items]
    return [future.result() for future in futures]


def read_files(fs: fsspec.AbstractFileSystem, paths: Sequence[str]) -> list[bytes | None]:
    """The whole contents of `paths`, in order; None for a file that does not exist. Read in
    one call, which an async file system (an object store's) runs concurrently: one round trip
    for all (each a read from offset 0, which s3fs does without asking for the size first). A
    file whose read fails otherwise is read again on its own, whose error raises."""
    if not paths:
        return []
    contents: list[bytes | None] = []
    results = fs.cat_ranges(list(paths), 0, None, on_error="return")
    for path, result in zip(paths, results, strict=True):
        if isinstance(result, FileNotFoundError):
            contents.append(None)
        elif isinstance(result, BaseException):  # e.g. an empty object: no byte 0 to start at
            try:
                contents.append(fs.cat_file(path))
            except FileNotFoundError:
                contents.append(None)
        else:
            contents.append(result)
    return contents


def open_for_writing(fs: fsspec.AbstractFileSystem, path: str, mode: str = "wb") -> Any:
    """`fs.open(path, mode)` for a new file. Its folder is made only when the file system says
    it is missing: an object store has no folders (no request for them), while `file://` gets
    the folders it needs."""
    try:
        return fs.open(path, mode)
    except FileNotFoundError:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        return fs.open(path, mode)


def create_file(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create `path` holding `data` with an exclusive create (FileExistsError when it exists):
    one request on an object store."""
    with open_for_writing(fs, path, "xb") as f:
        f.write(data)


def delete_table(fs: fsspec.AbstractFileSystem, root: str, name: str) -> bool:
    """Delete table `name` below `root`; False when it was gone already (other errors raise)."""
    try:
        fs.rm_file(table_path(root, name))
    except FileNotFoundError:
        return False
    return True


def delete_outputs(fs: fsspec.AbstractFileSystem, root: str, prefix: str) -> list[str]:
    """Delete every table below `root` whose name starts with `prefix` (a compaction's, or one
    run's, outputs); returns the names deleted. Files it cannot delete are logged and left to the
    garbage collector. Deleting by prefix also removes outputs a result does not name, and never
    a file outside the prefix, whatever a result claims."""
    if not is_plain_name(prefix):
        raise ValueError(f"refusing to delete outputs by prefix {prefix!r}: not a plain file name")
    try:
        names = [n for n in list_tables(fs, root) if n.startswith(prefix)]
    except OSError as e:
        log.warning("could not list outputs %s* (garbage collection will delete them): %s",
                    prefix, e)
        return []
    deleted = []
    for name in names:
        try:
            if delete_table(fs, root, name):
                deleted.append(name)
        except OSError as e:
            log.warning("could not delete %s (garbage collection will): %s", name, e)
    if deleted:
        log.info("deleted %d outputs named %s*", len(deleted), prefix)
    return deleted


# ----------------------------------------------------------------------------------- results


def validate_result(spec: "CompactionSpec", result: "CompactionResult") -> None:
    """ValueError naming the first way in which `result` cannot be the result of `spec`.

    A valid result is for the spec's compaction id; its outputs are named as outputs under the
    spec's prefix (plain names, each once), are whole tables of the compacting DB's root (no
    root, no clip), are at least a footer long, hold at least one entry and no more tombstones
    than entries, are ascending and non-overlapping, and lie within the spec's key range and
    within the span of its inputs' effective ranges (a compaction writes no key it did not read);
    its statistics are non-negative and add up to its outputs.
    """
    if result.compaction_id != spec.compaction_id:
        raise ValueError(f"result is for {result.compaction_id}, not {spec.compaction_id}")
    tables = [t for i in spec.inputs for t in i.tables]
    if result.outputs and not tables:
        raise ValueError("a compaction without input tables cannot have outputs")
    lowest = min((t.lo for t in tables), default=b"")
    highest = max((t.hi for t in tables), default=b"")  # exclusive
    start, end = spec.key_range
    previous: bytes | None = None
    names: set[str] = set()
    for t in result.outputs:
        name = t.name
        if not is_output_of(spec.output_prefix, name):  # a plain prefix makes a plain name
            raise ValueError(
                f"output {name!r} is not named as an output with prefix {spec.output_prefix!r}"
            )
        if name in names:
            raise ValueError(f"output {name} is listed twice")
        names.add(name)
        if not t.is_whole:
            raise ValueError(f"output {name} carries a root or a clip range")
        if t.size < FOOTER_SIZE:
            raise ValueError(f"output {name} has {t.size} bytes, less than a table's footer")
        if t.entries < 1 or not 0 <= t.tombstones <= t.entries:
            raise ValueError(f"output {name} has {t.entries} entries, {t.tombstones} tombstones")
        if t.min_expiry_ms is not None and t.min_expiry_ms < 0:
            raise ValueError(f"output {name} has a negative min_expiry_ms {t.min_expiry_ms}")
        if t.smallest > t.largest or (previous is not None and t.smallest <= previous):
            raise ValueError(f"output {name} is out of order or overlaps its predecessor")
        previous = t.largest
        if (start is not None and t.smallest < start) or (end is not None and t.largest >= end):
            raise ValueError(f"output {name} lies outside the spec's key range")
        if t.smallest < lowest or t.largest >= highest:
            raise ValueError(f"output {name} holds keys outside the key span of the inputs")
    _validate_stats(result)


def _validate_stats(result: "CompactionResult") -> None:
    s = result.stats
    for field, value in vars(s).items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"stats field {field!r} is {value}, not a finite number >= 0")
    if s.output_entries != sum(t.entries for t in result.outputs):
        raise ValueError("output entries do not add up to the stats")
    if s.output_bytes != sum(t.size for t in result.outputs):
        raise ValueError("output bytes do not add up to the stats")
