"""The `rocksdb` backend: one local RocksDB (rocksdict) per subtask, checkpointed incrementally.

This is the classic design that the disaggregated `lsm` backend is measured against. The database
lives in a local working directory with the WAL off (checkpoints are the durability). A snapshot
flushes, takes a RocksDB checkpoint (hard links) and uploads it to the checkpoint directory:

- SST files are immutable and never reuse a name within one database lineage, so an SST uploaded
  for an earlier checkpoint is referenced again, not sent again (`shared/`);
- the other files (MANIFEST, CURRENT, OPTIONS) are small and uploaded every time (`chk-<id>/`).

A native savepoint uploads every file of such a checkpoint anew into the savepoint's directory
(`"savepoint": true` in its handle): it shares no file with the job's checkpoints, so no release
deletes one, and a store restored from it does not take its files as its own shared SSTs (its
first checkpoint uploads them all).

Restore downloads every file of the handle into a fresh directory, verifying sizes and checksums.
A rescale takes the classic path: the snapshot overlapping the new key groups most becomes the new
database, clipped to them with range deletions, and the entries in range of the other snapshots
(each downloaded into a temporary directory, `export`) are inserted.

Options (`BackendConfig.options`): `block_cache_bytes` (default 64 MiB), `bloom_bits_per_key`
(default 10), `write_buffer_bytes` (default 64 MiB).
"""

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from statebackend import dfs
from statebackend.errors import InvalidHandleError, RestoreError
from statebackend.store import RescaleSource, StoreContext, StoreHandle, key_range

_MiB = 1 << 20


def rocksdb_options(options: Mapping[str, Any]) -> Options:
    """RocksDB options as streamlet uses them (also used by the benchmarks, for a fair peer)."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(int(options.get("write_buffer_bytes", 64 * _MiB)))
    table = BlockBasedOptions()
    table.set_bloom_filter(int(options.get("bloom_bits_per_key", 10)), False)
    table.set_block_cache(Cache(int(options.get("block_cache_bytes", 64 * _MiB))))
    opts.set_block_based_table_factory(table)
    return opts


def no_wal_write_options() -> WriteOptions:
    write_options = WriteOptions()
    write_options.disable_wal = True
    return write_options


class RocksDBStore:
    def __init__(self, context: StoreContext, path: str, uploaded: dict[str, dfs.FileRef]):
        self._context = context
        self._path = path
        self._db = Rdict(path, options=rocksdb_options(context.options))
        self._db.set_write_options(no_wal_write_options())
        # SST file name -> its uploaded copy, shared by later checkpoints.
        self._uploaded = uploaded
        self.get = self._db.get
        self.put = self._db.put

    def delete(self, key: bytes) -> None:
        self._db.delete(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        # A RocksDB iterator reads an implicit snapshot taken when it is created, here and now.
        iterator = self._db.iter()
        iterator.seek(start)
        return _iterate(iterator, end)

    def snapshot(self, checkpoint_id: int) -> StoreHandle:
        with self._local_checkpoint() as local:
            files = [self._upload(local, name, checkpoint_id) for name in sorted(os.listdir(local))]
        # Only SSTs of this checkpoint can be shared by the next one: forget the compacted-away.
        self._uploaded = {name: ref for name, ref in files if name.endswith(".sst")}
        return {"files": [{"name": name, **ref.to_dict()} for name, ref in files]}

    def savepoint(self, checkpoint_id: int, directory: str) -> StoreHandle:
        """Every file of a RocksDB checkpoint uploaded into `directory`, shared with nothing."""
        with self._local_checkpoint() as local:
            files = [
                {
                    "name": name,
                    **dfs.upload_file(
                        os.path.join(local, name), dfs.join(directory, name), self._options
                    ).to_dict(),
                }
                for name in sorted(os.listdir(local))
            ]
        return {"files": files, "savepoint": True}

    @contextlib.contextmanager
    def _local_checkpoint(self) -> Iterator[str]:
        """A RocksDB checkpoint of the flushed database in a local directory (removed after)."""
        self._db.flush()
        staging = tempfile.mkdtemp(prefix="chk-", dir=os.path.dirname(self._path))
        local = os.path.join(staging, "checkpoint")
        try:
            Checkpoint(self._db).create_checkpoint(local)
            yield local
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _upload(self, directory: str, name: str, checkpoint_id: int) -> tuple[str, dfs.FileRef]:
        if name.endswith(".sst"):
            ref = self._uploaded.get(name)
            if ref is None:
                url = self._remote(_SHARED, f"{uuid.uuid4().hex}-{name}")
                ref = dfs.upload_file(os.path.join(directory, name), url, self._options)
                self._uploaded[name] = ref
            return name, ref
        url = self._remote(f"chk-{checkpoint_id}", f"{uuid.uuid4().hex}-{name}")
        return name, dfs.upload_file(os.path.join(directory, name), url, self._options)

    def _remote(self, *parts: str) -> str:
        return dfs.join(self._context.checkpoint_dir, self._context.scope, *parts)

    @property
    def _options(self) -> Mapping[str, Any]:
        return self._context.storage_options

    def release(self, handle: StoreHandle, retained: Sequence[StoreHandle]) -> None:
        in_use = {ref.path for ref in list(self._uploaded.values())}
        in_use.update(f["path"] for kept in retained for f in kept["files"])
        for file in handle["files"]:
            if file["path"] not in in_use:
                dfs.delete_file(file["path"], self._options)

    def keep_only(self, start: bytes, end: bytes) -> None:
        """Delete every entry outside `start <= key < end`."""
        write_options = no_wal_write_options()
        self._db.delete_range(b"", start, write_options)
        self._db.delete_range(end, _AFTER_EVERY_KEY, write_options)

    def insert(self, entries: Iterable[tuple[bytes, bytes]]) -> None:
        """Put `entries`, in write batches."""
        write_options = no_wal_write_options()
        batch = WriteBatch(raw_mode=True)
        for key, value in entries:
            batch.put(key, value)
            if batch.len() >= _BATCH_ENTRIES:
                self._db.write(batch, write_options)
                batch = WriteBatch(raw_mode=True)
        if batch.len():
            self._db.write(batch, write_options)

    def dispose(self) -> None:
        self._db.close()
        shutil.rmtree(self._path, ignore_errors=True)


_SHARED = "shared"
_BATCH_ENTRIES = 10_000
# Greater than every physical key: a key starts with its key group, below 2**15 (`keygroups`).
_AFTER_EVERY_KEY = b"\xff"


def _iterate(iterator: Any, end: bytes) -> Iterator[tuple[bytes, bytes]]:
    while iterator.valid():
        key = iterator.key()
        if key >= end:
            return
        yield key, iterator.value()
        iterator.next()


class RocksDBStoreFactory:
    name = "rocksdb"

    def open(self, context: StoreContext, restore: StoreHandle | None) -> RocksDBStore:
        path = _new_db_path(context)
        if restore is None:
            return RocksDBStore(context, path, {})
        files = _snapshot_files(restore)
        # A savepoint's files are the user's: the store's first checkpoint uploads its own.
        shared = {} if restore.get("savepoint") else dict(files)
        with _restoring(context, path):
            _download(context, files, path)
            return RocksDBStore(
                context, path, {name: ref for name, ref in shared.items() if name.endswith(".sst")}
            )

    def export(
        self, context: StoreContext, handle: StoreHandle, start: bytes, end: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        files = _snapshot_files(handle)
        os.makedirs(context.local_dir, exist_ok=True)
        directory = tempfile.mkdtemp(prefix="export-", dir=context.local_dir)
        try:
            with _restoring(context, directory):
                _download(context, files, directory)
                db = Rdict(
                    directory, options=Options(raw_mode=True), access_type=AccessType.read_only()
                )
            iterator = db.iter()
            try:
                iterator.seek(start)
                yield from _iterate(iterator, end)
            finally:
                del iterator  # before the database it reads is closed
                db.close()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def open_rescaled(
        self, context: StoreContext, sources: Sequence[RescaleSource]
    ) -> RocksDBStore:
        """The classic rescale: download the snapshot that overlaps the new key groups most as
        the new database, delete its entries outside them, and insert the other snapshots'
        entries in them (each downloaded whole). SSTs are uploaded anew at the next checkpoint."""
        target = context.key_group_range
        base = max(sources, key=lambda s: len(s.key_groups.intersection(target)))
        path = _new_db_path(context)
        with _restoring(context, path):
            _download(context, _snapshot_files(base.handle), path)
            store = RocksDBStore(context, path, {})
        try:
            store.keep_only(*key_range(target, target))
            for source in sources:
                if source is not base:
                    start, end = key_range(source.key_groups, target)
                    store.insert(self.export(context, source.handle, start, end))
        except Exception as e:
            store.dispose()
            if isinstance(e, RestoreError):
                raise
            raise RestoreError(f"cannot restore the rocksdb store of {context.scope}: {e}") from e
        return store


def _new_db_path(context: StoreContext) -> str:
    base = os.path.join(context.local_dir, context.scope)
    os.makedirs(base, exist_ok=True)
    return os.path.join(base, f"db-{uuid.uuid4().hex}")


def _snapshot_files(handle: StoreHandle) -> list[tuple[str, dfs.FileRef]]:
    """`(name, file)` of every file of a snapshot; `InvalidHandleError` if malformed."""
    try:
        files = [(str(f["name"]), dfs.FileRef.from_dict(f)) for f in handle["files"]]
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidHandleError(f"malformed rocksdb store handle: {e!r}") from e
    for name, _ in files:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise InvalidHandleError(f"rocksdb store handle names a bad file {name!r}")
    return files


def _download(context: StoreContext, files: list[tuple[str, dfs.FileRef]], directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, ref in files:
        dfs.download_verified(ref, os.path.join(directory, name), context.storage_options)


@contextlib.contextmanager
def _restoring(context: StoreContext, directory: str) -> Iterator[None]:
    """Removes `directory` if the block fails, which raises a `RestoreError` (subclass)."""
    try:
        yield
    except RestoreError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(directory, ignore_errors=True)
        raise RestoreError(f"cannot restore the rocksdb store of {context.scope}: {e}") from e
