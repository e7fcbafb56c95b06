"""The `lsm` state backend: `LsmStoreFactory` opens an `LsmDB` per operator subtask as a `KvStore`.

- DB root: `context.checkpoint_dir/context.scope/db` (the subtask's *base* root), unless the
  option `lsm.root` overrides it; a DB that adopts other DBs' versions gets a fresh root next to
  it (`<base>-<hex 32>`, `files.new_adopting_root`). The DB's files live there for good:
  checkpoints pin manifest versions instead of copying files.
- snapshot(checkpoint_id): flush, then pin the committed version. The handle is
  `{backend, format, db_root, manifest: FileRef dict (path, size, xxh3), epoch, checkpoint_id,
  key_groups}`. The runtime releases the checkpoint (`release`) when it falls out of retention,
  through any store of the operator: a handle of another root (an old subtask's after a
  rescale) is released with a release marker there; what a pin keeps and when its files go:
  docs/lsm-protocol.md, "Checkpoint pins" and "Retired roots".
- savepoint(checkpoint_id, directory): a native savepoint: the committed version pinned by a
  savepoint pin and its manifest copied into `directory`; no table is copied. Its handle is the
  snapshot handle without `checkpoint_id`, with `manifest` naming the copy (a file reference in
  the directory, so the savepoint's metadata can name it relative to it) and `savepoint_pin` the
  pin; `LsmStoreFactory.dispose_savepoint` lets go of it (docs/lsm-protocol.md, "Savepoint
  pins").
- TTL: compactions drop entries that expired by the backend's clock (`context.clock`), never by
  the wall clock.
- restore (`open` with a handle of the store's key groups): verify the handle's manifest (missing:
  MissingCheckpointDataError, damaged: CorruptCheckpointError, malformed handle:
  InvalidHandleError). A checkpoint of one of this subtask's own roots (its base root or an
  adopting root made from it) is taken over: that root opens at the pinned manifest with a new
  epoch, fencing any older writer. Any other handle (a savepoint, another job's or operator's
  checkpoint) is adopted like a rescale source: a restore never fences a DB it does not own.
- rescale (`open_rescaled`): a new DB adopts the sources' versions clipped to its key groups
  (`adoption`), in a fresh root, without copying a table; roots of this operator's old subtasks
  are retired (their subtasks no longer run). `export` reads a snapshot's entries in a key range
  from its pinned version, read-only, keeping no local file.
- Tables are read lazily, so restore and rescale time do not grow with the state size.
- Reading ahead (`reads_ahead`: when the tables are not on a local disk): `prefetch(keys,
  max_bytes)` looks the keys up at once (`LsmDB.get_many`) and serves the following `get`s of
  them from what it read, until a key is written (`put`/`delete` forget it) or the next
  prefetch. `defer_write_stalls` makes writes put a stall off for the runtime to await
  (`writes_stalled`, `wait_writable`: `LsmDB.defer_stalls`).

Options (`context.options`, all optional, strings are converted, the `lsm.` prefix optional):
`lsm.<field>` for every field of `LsmOptions` (e.g. `lsm.memtable_bytes`, `lsm.block_cache_bytes`,
`lsm.file_cache_bytes`, `lsm.gc_grace_s`), `lsm.block_size`, `lsm.bloom_bits_per_key`,
`lsm.compression`, `lsm.compression_level` (table options) and `lsm.root`. The file cache
lives below `context.local_dir/context.scope` unless `lsm.local_dir` is given.

`compaction_mode` (`local`, or a mode the runtime registered such as `remote`) and the other
options named `compaction_*` (the service's address and client settings, the local compactor's
workers) choose the compactor: one per distinct set of them, shared by every DB the factory opens
(see `statebackend.lsm.compactor`). The runtime hands the options over typed (parsed once, from
configuration keys); strings are converted for backends configured by hand.
"""

import dataclasses
import logging
import os
import posixpath
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from statebackend.dfs import FileRef, filesystem, join
from statebackend.errors import (
    CorruptCheckpointError,
    InvalidHandleError,
    MissingCheckpointDataError,
)
from statebackend.lsm import files, reads
from statebackend.lsm.adoption import assemble, clip
from statebackend.lsm.cache import TableCache
from statebackend.lsm.compactor import IN_PROCESS_PROTOCOLS, Compactor, create_compactor
from statebackend.lsm.db import LsmDB
from statebackend.lsm.debt import debt_metrics
from statebackend.lsm.manifest import CorruptManifestError, decode, verified
from statebackend.lsm.meta import TableOptions
from statebackend.lsm.options import PREFIX, LsmOptions
from statebackend.lsm.pins import delete_pin
from statebackend.lsm.sharing import collect_retired, retire_newest
from statebackend.lsm.version import MAX_LEVELS, Version
from statebackend.store import RescaleSource, StoreContext, StoreHandle, key_range

NAME = "lsm"
HANDLE_FORMAT = 1
_MISSING = object()
log = logging.getLogger(__name__)


class LsmStore:
    """A KvStore over one LsmDB; scans are point-in-time (see LsmDB.scan)."""

    def __init__(self, db: LsmDB, context: StoreContext, local_dir: str) -> None:
        self.db = db
        self._context = context
        self._local_dir = local_dir
        # What the last `prefetch` read, less what was written since: served to `get`.
        self._prefetched: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if self._prefetched:
            value = self._prefetched.get(key, _MISSING)
            if value is not _MISSING:
                return value  # type: ignore[return-value]
        return self.db.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if self._prefetched:
            self._prefetched.pop(key, None)
        self.db.put(key, value)

    def delete(self, key: bytes) -> None:
        if self._prefetched:
            self._prefetched.pop(key, None)
        self.db.delete(key)

    @property
    def reads_ahead(self) -> bool:
        """Whether a runtime should `prefetch`: the tables are on a remote file system, where a
        read is a round trip; a local disk (`file://`) is read at once, in less time than
        reading ahead costs."""
        return not isinstance(self.db.fs, LocalFileSystem)

    def prefetch(self, keys: list[bytes], max_bytes: int) -> None:
        """Read `keys` ahead, concurrently (`LsmDB.get_many`), and serve the following `get`s of
        them from what was read, until the next prefetch (a write of a key forgets it). Holds at
        most about `max_bytes` of values: the others are read again when asked for. A failed
        read holds nothing: the `get` that needs it reads again, and raises then. Blocks: call
        it off the event loop, while nothing else uses the store."""
        self._prefetched = {}
        try:
            found = self.db.get_many(keys)
        except Exception:  # noqa: BLE001 - a get raises it where the reading state names it
            log.debug("prefetch of %d keys failed", len(keys), exc_info=True)
            return
        held: dict[bytes, bytes | None] = {}
        size = 0
        for key, value in found.items():
            size += len(key) + (0 if value is None else len(value))
            if size > max_bytes:
                break
            held[key] = value
        self._prefetched = held

    def defer_write_stalls(self) -> None:
        """Writes never wait for a stall from now on (`LsmDB.defer_stalls`)."""
        self.db.defer_stalls()

    def writes_stalled(self) -> bool:
        return self.db.writes_stalled()

    def wait_writable(self) -> None:
        self.db.wait_writable()

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.db.scan(start, end)

    def _handle(self, manifest: FileRef) -> StoreHandle:
        kg = self._context.key_group_range
        return {
            "backend": NAME,
            "format": HANDLE_FORMAT,
            "db_root": self.db.root,
            "manifest": manifest.to_dict(),
            "epoch": self.db.epoch,
            "key_groups": [kg.start, kg.end],
        }

    def snapshot(self, checkpoint_id: int) -> StoreHandle:
        return {**self._handle(self.db.checkpoint(checkpoint_id)), "checkpoint_id": checkpoint_id}

    def savepoint(self, checkpoint_id: int, directory: str) -> StoreHandle:
        """A native savepoint in `directory` (an fsspec URL): see the module docstring. Its handle
        has no `checkpoint_id`: no `release` ever applies to it."""
        manifest, pin = self.db.savepoint(directory)
        return {**self._handle(manifest), "savepoint_pin": pin}

    def metrics(self) -> dict[str, float]:
        """Compactions installed, by where they ran, and their CPU seconds (for progress lines);
        the DB's compaction debt and write stalls (`statebackend.lsm.debt.debt_metrics`)."""
        db = self.db
        return {
            "compactions_local": db.compactions_installed - db.compactions_remote,
            "compactions_remote": db.compactions_remote,
            "compaction_cpu_seconds_local": db.compaction_cpu_seconds["local"],
            "compaction_cpu_seconds_remote": db.compaction_cpu_seconds["remote"],
            **debt_metrics(db.version, db.o, db.stalls),
        }

    def release(self, handle: StoreHandle, retained: Sequence[StoreHandle]) -> None:
        """Unpin a checkpoint that is no longer retained (the retained ones keep their pins): one
        of this DB's root in its manifest, one of another root with a release marker there.
        Savepoints are never released here (`LsmStoreFactory.dispose_savepoint`)."""
        snap = _parse_handle(handle)
        if snap.checkpoint_id is None:
            return
        if snap.root == self.db.root:
            self.db.release_checkpoint(snap.checkpoint_id)
        else:
            self.db.release_checkpoint_of(snap.root, snap.checkpoint_id)

    def dispose(self) -> None:
        """Close the DB for good: its root is retired (docs/lsm-protocol.md, "Retired roots")."""
        self.db.close(retire_root=True)
        shutil.rmtree(self._local_dir, ignore_errors=True)


@dataclass(frozen=True)
class _Settings:
    """How a store of one context is opened."""

    base: str  # the subtask's base root
    operator_roots: bool  # whether roots of the operator's other subtasks can be recognized
    options: LsmOptions
    local_dir: str


class LsmStoreFactory:
    """Opens LsmDB stores. `compactor` (e.g. the remote one) is shared by every DB it opens."""

    name = NAME

    def __init__(self, compactor: Compactor | None = None) -> None:
        self.compactor = compactor
        # One compactor per compaction settings (see _compactor_for), shared by the DBs opened.
        self._shared: dict[tuple[Any, ...], Compactor] = {}
        self._lock = threading.Lock()

    def _compactor_for(self, context: StoreContext) -> Compactor:
        """The compactor of the context's compaction settings: its options named
        `compaction_*` (with or without the `lsm.` prefix: the mode, the service's address and
        client settings, the local workers) and whether its file system is in-process; DBs
        with the same settings share one."""
        if self.compactor is not None:
            return self.compactor
        options = context.options
        mode = str(options.get("compaction_mode") or "local")
        protocol = split_protocol(context.checkpoint_dir)[0] or "file"
        in_process = protocol in IN_PROCESS_PROTOCOLS
        settings = sorted(
            (name, value)
            for name, value in options.items()
            if name.removeprefix(PREFIX).startswith("compaction_")
        )
        key = (mode, in_process, *settings)
        with self._lock:
            if key not in self._shared:
                self._shared[key] = create_compactor(mode, options, in_process)
            return self._shared[key]

    def _settings(self, context: StoreContext) -> _Settings:
        # Plain names of LSM options are taken too; other plain names belong to other layers,
        # while an unknown `lsm.` name is a typo (parse_options rejects it).
        raw = {
            k.removeprefix(PREFIX): v
            for k, v in context.options.items()
            if k.startswith(PREFIX) or k in option_names()
        }
        configured = raw.pop("root", None)
        base = str(configured or join(context.checkpoint_dir, context.scope, "db"))
        local_dir = os.path.join(context.local_dir, context.scope)
        raw.setdefault("local_dir", local_dir)
        return _Settings(base.rstrip("/"), configured is None, parse_options(raw), local_dir)

    def _db(self, context: StoreContext, settings: _Settings, root: str, **kwargs: Any) -> LsmDB:
        return LsmDB(
            root,
            settings.options,
            context.storage_options,
            self._compactor_for(context),
            clock=context.clock,
            **kwargs,
        )

    def open(self, context: StoreContext, restore: StoreHandle | None) -> LsmStore:
        settings = self._settings(context)
        if restore is None:
            db = self._db(context, settings, settings.base, fresh=True)
            return LsmStore(db, context, settings.local_dir)
        snap = _parse_handle(restore)
        expected = [context.key_group_range.start, context.key_group_range.end]
        if snap.key_groups != expected:
            raise InvalidHandleError(
                f"{NAME} handle is for key groups {snap.key_groups}, this store owns {expected}"
            )
        if snap.savepoint_pin is None and files.is_root_of(settings.base, snap.root):
            # The DB reads the handle's manifest with the root's other files, verified against
            # the handle (Missing/CorruptCheckpointError).
            db = self._db(
                context, settings, snap.root, restore_manifest=snap.number,
                restore_ref=snap.manifest,
            )
            return LsmStore(db, context, settings.local_dir)
        source = RescaleSource(restore, context.key_group_range)
        return self.open_rescaled(context, [source])

    def open_rescaled(self, context: StoreContext, sources: Sequence[RescaleSource]) -> LsmStore:
        """A store of `context`'s key groups adopting the sources' versions, clipped to them, in
        a fresh root: no table is copied (docs/lsm-protocol.md, "Adopting versions of other
        databases")."""
        settings = self._settings(context)
        num_levels = settings.options.num_levels
        snaps = []
        for source in sources:
            snap = _parse_handle(source.handle)
            if snap.key_groups != [source.key_groups.start, source.key_groups.end]:
                raise InvalidHandleError(
                    f"{NAME} handle of {snap.root} is for key groups {snap.key_groups}, not "
                    f"{source.key_groups.start}..{source.key_groups.end}"
                )
            snaps.append(snap)
        versions = files.each(
            lambda snap: _read_version(snap, context.storage_options, num_levels), snaps
        )
        parts = []
        for source, snap, version in zip(sources, snaps, versions, strict=True):
            start, end = key_range(source.key_groups, context.key_group_range)
            parts.append(clip(version, snap.root, start, end))
        roots = [snap.root for snap in snaps]
        try:
            version = assemble(parts, num_levels)
        except ValueError as e:
            raise InvalidHandleError(f"the {NAME} snapshots cannot be combined: {e}") from e
        root = files.new_adopting_root(settings.base)
        try:
            db = self._db(context, settings, root, adopt=version)
        except BaseException:
            _remove_root(root, context.storage_options)  # a failed restore leaves nothing
            raise
        if settings.operator_roots:
            retired = [old for old in roots if _of_same_operator(settings.base, old)]
            files.each(lambda old: retire_newest(old, context.storage_options), retired)
        return LsmStore(db, context, settings.local_dir)

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        """The live entries of snapshot `handle` with start <= key < end, read from its pinned
        version without opening its DB: nothing is written, no local file is kept."""
        snap = _parse_handle(handle)
        version = _read_version(snap, context.storage_options, MAX_LEVELS)
        fs, path = filesystem(snap.root, context.storage_options)
        tables = TableCache(fs, path, 0, 0, context.local_dir, context.storage_options)
        try:
            yield from reads.entries(version, start, end, tables)
        except FileNotFoundError as e:
            raise MissingCheckpointDataError(
                f"a table of the {NAME} snapshot in {snap.root} is missing: {e}"
            ) from e

    def dispose_savepoint(self, context: StoreContext, handle: StoreHandle) -> None:
        """Let go of a native savepoint: delete its pin, then collect its root if that is retired
        (a live root's writer collects it). Idempotent."""
        snap = _parse_handle(handle)
        if snap.savepoint_pin is None:
            raise InvalidHandleError(f"{NAME} handle of {snap.root} is not a savepoint's")
        fs, path = filesystem(snap.root, context.storage_options)
        delete_pin(fs, path, snap.savepoint_pin)
        grace = self._settings(context).options.gc_grace_s
        collect_retired(snap.root, context.storage_options, grace)


def option_names() -> set[str]:
    """Names of the LSM options (without the `lsm.` prefix); docs/configuration.md lists them."""
    fields = [*dataclasses.fields(TableOptions), *dataclasses.fields(LsmOptions)]
    return {f.name for f in fields} - {"table"} | {"root"}


def parse_options(raw: Mapping[str, Any]) -> LsmOptions:
    """LsmOptions from option names without the `lsm.` prefix; unknown names are an error."""
    table_fields = {f.name: f for f in dataclasses.fields(TableOptions)}
    db_fields = {f.name: f for f in dataclasses.fields(LsmOptions) if f.name != "table"}
    table: dict[str, Any] = {}
    db: dict[str, Any] = {}
    for key, value in raw.items():
        if key in table_fields:
            table[key] = _convert(key, value, table_fields[key].type)
        elif key in db_fields:
            db[key] = _convert(key, value, db_fields[key].type)
        else:
            raise ValueError(f"unknown LSM option {PREFIX}{key}")
    return LsmOptions(table=TableOptions(**table), **db)


def _convert(key: str, value: Any, kind: Any) -> Any:
    if value is None or kind in ("str | None", str | None):
        return value
    try:
        if kind in (bool, "bool"):
            if isinstance(value, str):
                return {"true": True, "false": False}[value.lower()]
            return bool(value)
        if kind in (int, "int"):
            return int(value)
        if kind in (float, "float"):
            return float(value)
        return str(value)
    except (KeyError, ValueError) as e:
        raise ValueError(f"LSM option {PREFIX}{key}: cannot use {value!r}") from e


@dataclass(frozen=True)
class _Snapshot:
    """What a store handle names."""

    root: str
    manifest: FileRef  # the pinned manifest (of a savepoint: its copy)
    number: int | None  # of a checkpoint: the manifest's number in `root`
    key_groups: list[int]
    checkpoint_id: int | None  # None for a savepoint
    savepoint_pin: str | None


def _parse_handle(handle: StoreHandle) -> _Snapshot:
    """InvalidHandleError unless `handle` is a well-formed handle of this backend."""
    if not isinstance(handle, Mapping) or handle.get("backend") != NAME:
        raise InvalidHandleError(f"malformed {NAME} store handle (not of {NAME}): {handle!r:.200}")
    if handle.get("format") != HANDLE_FORMAT:
        raise InvalidHandleError(f"{NAME} handle of unknown format {handle.get('format')!r}")
    root, kg, pin = handle.get("db_root"), handle.get("key_groups"), handle.get("savepoint_pin")
    checkpoint_id = handle.get("checkpoint_id")
    try:
        ref = FileRef.from_dict(handle["manifest"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidHandleError(f"malformed {NAME} store handle: {handle!r:.200}") from e
    number = files.parse_manifest_name(posixpath.basename(ref.path))
    if pin is None:
        valid = (
            isinstance(checkpoint_id, int)
            and isinstance(root, str)
            and number is not None
            and ref.path == files.manifest_path(root, number)
        )
    else:
        parsed = files.parse_pin_name(pin) if isinstance(pin, str) else None
        valid = parsed is not None and parsed.kind == files.SAVEPOINT and checkpoint_id is None
    if not (
        valid
        and isinstance(root, str)
        and isinstance(kg, list)
        and len(kg) == 2
        and all(isinstance(g, int) for g in kg)
    ):
        raise InvalidHandleError(f"malformed {NAME} store handle: {handle!r:.200}")
    return _Snapshot(root.rstrip("/"), ref, number if pin is None else None, kg, checkpoint_id,
                     pin)


def _read_version(snap: _Snapshot, storage_options: Mapping[str, Any], levels: int) -> Version:
    """The version a handle pins, its manifest verified against the handle."""
    fs, path = filesystem(snap.manifest.path, storage_options)
    data = verified(snap.manifest, files.read_files(fs, [path])[0])  # Missing/Corrupt...Error
    try:
        return decode(data, snap.manifest.path, levels).version
    except CorruptManifestError as e:
        raise CorruptCheckpointError(str(e)) from e
    except ValueError as e:  # more levels than this DB has
        raise InvalidHandleError(f"{NAME} snapshot {snap.manifest.path}: {e}") from e


def _of_same_operator(base: str, root: str) -> bool:
    """Whether `root` is a DB root of a subtask of the operator whose subtask has the base root
    `base` (`<checkpoint_dir>/<job>/<operator>/<subtask>/db`, or an adopting root made from
    one): another parallelism restoring its snapshots means that subtask no longer runs."""
    subtask_dir = posixpath.dirname(root)
    return posixpath.dirname(subtask_dir) == posixpath.dirname(
        posixpath.dirname(base)
    ) and files.is_root_of(f"{subtask_dir}/db", root)


def _remove_root(root: str, storage_options: Mapping[str, Any]) -> None:
    fs, path = filesystem(root, storage_options)
    try:
        fs.rm(path, recursive=True)
    except (FileNotFoundError, OSError):
        pass  # best effort: an empty root without manifests holds nothing

