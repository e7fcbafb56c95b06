"""The `lsm` state backend: `LsmStoreFactory` opens an `LsmDB` per operator subtask as a `KvStore`.

- DB root: `context.checkpoint_dir/context.scope/db`, unless the option `lsm.root` overrides it.
  The DB's files live there for good: checkpoints pin manifest versions instead of copying files.
- snapshot(checkpoint_id): flush, then pin the committed version. The handle is
  `{backend, format, db_root, manifest: FileRef dict (path, size, xxh3), epoch, checkpoint_id,
  key_groups}`. The runtime releases the checkpoint (`release`) when it falls out of retention;
  what a pin keeps and when its files go: docs/lsm-protocol.md, "Checkpoint pins".
- TTL: compactions drop entries that expired by the backend's clock (`context.clock`), never by
  the wall clock.
- restore: verify the pinned manifest against the handle (missing: MissingCheckpointDataError,
  damaged: CorruptCheckpointError, malformed handle: InvalidHandleError), then open the handle's
  root at that manifest with a new epoch (fencing any older writer). Tables are read lazily, so
  restore time does not grow with the state size.

Options (`context.options`, all optional, strings are converted, the `lsm.` prefix optional):
`lsm.<field>` for every field of `LsmOptions` (e.g. `lsm.memtable_bytes`, `lsm.block_cache_bytes`,
`lsm.file_cache_bytes`, `lsm.gc_grace_s`), `lsm.block_size`, `lsm.bloom_bits_per_key`,
`lsm.compression`, `lsm.compression_level` (table options) and `lsm.root`. The file cache
lives below `context.local_dir/context.scope` unless `lsm.local_dir` is given.

`compaction_mode` (`local`, or a mode the runtime registered such as `remote`) and
`compaction_service_address` choose the compactor: one per mode and address, shared by every DB
the factory opens (see `statebackend.lsm.compactor`).
"""

import dataclasses
import os
import posixpath
import shutil
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fsspec.core import split_protocol

from statebackend.dfs import FileRef, join, read_verified
from statebackend.errors import InvalidHandleError
from statebackend.lsm.compactor import IN_PROCESS_PROTOCOLS, Compactor, create_compactor
from statebackend.lsm.db import LsmDB
from statebackend.lsm.files import manifest_path, parse_manifest_name
from statebackend.lsm.options import PREFIX, LsmOptions
from statebackend.lsm.table import TableOptions
from statebackend.store import StoreContext, StoreHandle

NAME = "lsm"
HANDLE_FORMAT = 1


class LsmStore:
    """A KvStore over one LsmDB; scans are point-in-time (see LsmDB.scan)."""

    def __init__(self, db: LsmDB, context: StoreContext, local_dir: str) -> None:
        self.db = db
        self._context = context
        self._local_dir = local_dir

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.db.put(key, value)

    def delete(self, key: bytes) -> None:
        self.db.delete(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.db.scan(start, end)

    def snapshot(self, checkpoint_id: int) -> StoreHandle:
        manifest = self.db.checkpoint(checkpoint_id)
        kg = self._context.key_group_range
        return {
            "backend": NAME,
            "format": HANDLE_FORMAT,
            "db_root": self.db.root,
            "manifest": manifest.to_dict(),
            "epoch": self.db.epoch,
            "checkpoint_id": checkpoint_id,
            "key_groups": [kg.start, kg.end],
        }

    def metrics(self) -> dict[str, float]:
        """Compactions installed, by where they ran, and their CPU seconds (for progress lines)."""
        db = self.db
        return {
            "compactions_local": db.compactions_installed - db.compactions_remote,
            "compactions_remote": db.compactions_remote,
            "compaction_cpu_seconds_local": db.compaction_cpu_seconds["local"],
            "compaction_cpu_seconds_remote": db.compaction_cpu_seconds["remote"],
        }

    def release(self, handle: StoreHandle, retained: Sequence[StoreHandle]) -> None:
        """Unpin a checkpoint that is no longer retained (the retained ones keep their pins)."""
        if handle.get("db_root") == self.db.root:
            self.db.release_checkpoint(int(handle["checkpoint_id"]))

    def dispose(self) -> None:
        self.db.close()
        shutil.rmtree(self._local_dir, ignore_errors=True)


class LsmStoreFactory:
    """Opens LsmDB stores. `compactor` (e.g. the remote one) is shared by every DB it opens."""

    name = NAME

    def __init__(self, compactor: Compactor | None = None) -> None:
        self.compactor = compactor
        # One compactor per (mode, address, in-process file system), shared by the DBs opened.
        self._shared: dict[tuple[str, str, bool], Compactor] = {}
        self._lock = threading.Lock()

    def _compactor_for(self, context: StoreContext) -> Compactor:
        if self.compactor is not None:
            return self.compactor
        options = context.options
        mode = str(options.get("compaction_mode") or "local")
        address = str(options.get("compaction_service_address") or "")
        protocol = split_protocol(context.checkpoint_dir)[0] or "file"
        key = (mode, address, protocol in IN_PROCESS_PROTOCOLS)
        with self._lock:
            if key not in self._shared:
                self._shared[key] = create_compactor(mode, options, key[2])
            return self._shared[key]

    def open(self, context: StoreContext, restore: StoreHandle | None) -> LsmStore:
        # Plain names of LSM options are taken too; other plain names belong to other layers,
        # while an unknown `lsm.` name is a typo (parse_options rejects it).
        raw = {
            k.removeprefix(PREFIX): v
            for k, v in context.options.items()
            if k.startswith(PREFIX) or k in option_names()
        }
        root = str(raw.pop("root", join(context.checkpoint_dir, context.scope, "db")))
        local_dir = os.path.join(context.local_dir, context.scope)
        raw.setdefault("local_dir", local_dir)
        options = parse_options(raw)
        compactor = self._compactor_for(context)
        if restore is None:
            db = LsmDB(
                root, options, context.storage_options, compactor, fresh=True, clock=context.clock
            )
        else:
            root, number = _check_handle(restore, context)
            db = LsmDB(
                root, options, context.storage_options, compactor, number, clock=context.clock
            )
        return LsmStore(db, context, local_dir)


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


def _check_handle(handle: StoreHandle, context: StoreContext) -> tuple[str, int]:
    """The DB root and pinned manifest number of a verified handle."""
    if not isinstance(handle, Mapping) or handle.get("backend") != NAME:
        raise InvalidHandleError(f"malformed {NAME} store handle (not of {NAME}): {handle!r:.200}")
    if handle.get("format") != HANDLE_FORMAT:
        raise InvalidHandleError(f"{NAME} handle of unknown format {handle.get('format')!r}")
    root, kg = handle.get("db_root"), handle.get("key_groups")
    try:
        ref = FileRef.from_dict(handle["manifest"])
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidHandleError(f"malformed {NAME} store handle: {handle!r:.200}") from e
    number = parse_manifest_name(posixpath.basename(ref.path))
    if (
        not isinstance(root, str)
        or not isinstance(kg, list)
        or number is None
        or ref.path != manifest_path(root, number)
    ):
        raise InvalidHandleError(f"malformed {NAME} store handle: {handle!r:.200}")
    expected = [context.key_group_range.start, context.key_group_range.end]
    if kg != expected:
        raise InvalidHandleError(
            f"{NAME} handle is for key groups {kg}, this store owns {expected}"
        )
    read_verified(ref, context.storage_options)  # Missing/CorruptCheckpointError
    return root, number
