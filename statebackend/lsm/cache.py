"""The local cache of a disaggregated LSM DB: decoded blocks in memory, whole table files on disk.

- `TableCache`: the open `TableReader`s of a DB (as LevelDB's table cache), one per table file,
  keyed by (root, name) (`TableMeta.key`: a DB may reference tables of other roots), reading
  through the two caches below. A reader of another root's table is named by its path, so its
  blocks and its errors never mix with a table of the same name in the DB's own root. Several
  tables can be opened at once (`open_all`: concurrently, so in the round trips of one).
- `BlockCache`: an LRU of decoded blocks keyed by (table name, block offset), bounded by the bytes
  the table reader charges for each block. Table readers consult it (see table.BlockCache).
- `FileCache`: an LRU of whole table files copied from the DFS to a local directory, bounded in
  bytes. `source()` wraps a DFS file so reads come from the local copy once it is fetched. A table
  larger than the whole cache is read from the DFS by range (on an object store, the ranges of
  many lookups in one batched call: `CachedSource.remote`).

Both count hits and misses. A capacity of 0 disables a cache; the DB then reads the DFS directly.
Files are immutable and names never reused, so a cached copy never goes stale.
"""

import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec

from statebackend.dfs import filesystem
from statebackend.lsm import files
from statebackend.lsm.files import root_id, table_label, table_path
from statebackend.lsm.meta import TableMeta, TableOptions, table_key
from statebackend.lsm.table import CorruptTableError, FsFileSource, TableReader, tail_read_size


@dataclass(frozen=True)
class CacheStats:
    block_hits: int
    block_misses: int
    block_bytes: int
    file_hits: int
    file_misses: int
    file_bytes: int


class BlockCache:
    """A byte-bounded LRU. `get` takes no lock (each OrderedDict call is atomic under the GIL)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self.used = 0  # invariant: sum of charges of the entries in _entries
        self._entries: OrderedDict[tuple[str, int], tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()  # serializes put/evict/discard

    def get(self, key: tuple[str, int]) -> object | None:
        entries = self._entries
        try:
            value = entries[key][0]
            entries.move_to_end(key)
        except KeyError:  # absent, or evicted by another thread between the two calls
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: tuple[str, int], value: object, charge: int) -> None:
        if charge > self.capacity:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.used -= old[1]
            self._entries[key] = (value, charge)
            self.used += charge
            while self.used > self.capacity:
                _, (_, c) = self._entries.popitem(last=False)
                self.used -= c

    def discard_table(self, name: str) -> None:
        """Drop the blocks of a deleted table."""
        with self._lock:
            # list() copies the keys in one C call: get() may reorder entries concurrently.
            for key in [k for k in list(self._entries) if k[0] == name]:
                self.used -= self._entries.pop(key)[1]


class FileCache:
    """Whole table files on local disk, LRU, bounded in bytes; the directory is private to it."""

    def __init__(self, directory: str, capacity: int) -> None:
        self.capacity = capacity
        os.makedirs(directory, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="lsm-files-", dir=directory)
        self.hits = 0
        self.misses = 0
        self.used = 0  # invariant: sum of sizes of the files in _files, all present in self.dir
        self._files: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()

    def source(
        self, fs: fsspec.AbstractFileSystem, path: str, name: str, size: int
    ) -> "CachedSource":
        return CachedSource(self, fs, path, name, size)

    def _local(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def lookup(self, name: str) -> str | None:
        with self._lock:
            if name in self._files:
                self._files.move_to_end(name)
                self.hits += 1
                return self._local(name)
            self.misses += 1
            return None

    def fetch(self, fs: fsspec.AbstractFileSystem, path: str, name: str, size: int) -> str | None:
        """Copy a table to local disk; None when it cannot fit."""
        if size > self.capacity:
            return None
        tmp = self._local(f".{uuid.uuid4().hex}.part")
        try:
            fs.get_file(path, tmp)
            with self._lock:
                if name not in self._files:
                    os.replace(tmp, self._local(name))
                    self._files[name] = size
                    self.used += size
                    self._evict_locked(keep=name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return self._local(name)

    def _evict_locked(self, keep: str) -> None:
        while self.used > self.capacity:
            name = next(iter(self._files))
            if name == keep:
                break
            self._remove_locked(name)

    def _remove_locked(self, name: str) -> None:
        self.used -= self._files.pop(name)
        try:
            os.remove(self._local(name))
        except FileNotFoundError:
            pass

    def discard(self, name: str) -> None:
        with self._lock:
            if name in self._files:
                self._remove_locked(name)

    def close(self) -> None:
        with self._lock:
            self._files.clear()
            self.used = 0
        shutil.rmtree(self.dir, ignore_errors=True)


class CachedSource:
    """A table file on the DFS read through the FileCache (a table.FileSource)."""

    def __init__(
        self, cache: FileCache, fs: fsspec.AbstractFileSystem, path: str, name: str, size: int
    ):
        self.cache = cache
        self.fs = fs
        self.path = path
        self.name = name
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        local = self.cache.lookup(self.name)
        if local is None:
            local = self.cache.fetch(self.fs, self.path, self.name, self.size)
        if local is not None:
            try:
                with open(local, "rb") as f:
                    return os.pread(f.fileno(), length, offset)
            except FileNotFoundError:
                pass  # evicted between lookup and open: read the DFS instead
        return self.fs.cat_file(self.path, start=offset, end=offset + length)

    def remote(self) -> tuple[fsspec.AbstractFileSystem, str] | None:
        """(file system, path) for a table larger than the whole cache (read by range from the
        DFS) on an asynchronous file system; None for one `read` copies to local disk."""
        if self.size <= self.cache.capacity or not getattr(self.fs, "async_impl", False):
            return None
        return self.fs, self.path


class TableCache:
    """Open readers by `TableMeta.key`. Readers are immutable, so `readers` is read without a lock
    and a racing duplicate open is harmless. With both capacities 0 it keeps no local file.
    `table_options` (the DB's) size the first read of a table it opens (`tail_read_size`)."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root_path: str,
        block_cache_bytes: int,
        file_cache_bytes: int,
        local_dir: str,
        storage_options: Mapping[str, Any] | None = None,
        table_options: TableOptions | None = None,
    ) -> None:
        self.fs = fs
        self.root_path = root_path
        self.storage_options = dict(storage_options or {})
        self.table_options = table_options or TableOptions()
        self._roots: dict[str, tuple[fsspec.AbstractFileSystem, str]] = {"": (fs, root_path)}
        self.readers: dict[str, TableReader] = {}
        self.blocks = BlockCache(block_cache_bytes) if block_cache_bytes > 0 else None
        self.files = FileCache(local_dir, file_cache_bytes) if file_cache_bytes > 0 else None

    def _location(self, root: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The file system and path of `root` ("": the DB's own root)."""
        location = self._roots.get(root)
        if location is None:
            location = self._roots[root] = filesystem(root, self.storage_options)
        return location

    def reader(self, t: TableMeta) -> TableReader:
        return self.readers.get(t.key) or self.open(t)

    def open(self, t: TableMeta) -> TableReader:
        fs, root_path = self._location(t.root)
        path = table_path(root_path, t.name)
        name, local = _names(t.root, t.name)
        source = (
            self.files.source(fs, path, local, t.size)
            if self.files is not None
            else FsFileSource(fs, path, t.size)
        )
        reader = TableReader(source, name, self.blocks, tail_read_size(t, self.table_options))
        self.readers[t.key] = reader
        return reader

    def open_all(self, tables: list[TableMeta]) -> None:
        """Open `tables` concurrently (on an object store: in the round trips of one table). A
        table that fails to open stays closed: the read that needs it opens it again, and gets
        the error then, as if it had not been opened ahead."""

        def open_ahead(t: TableMeta) -> None:
            try:
                self.open(t)
            except (OSError, CorruptTableError):
                pass

        files.each(open_ahead, tables)

    def evict(self, root: str, name: str) -> None:
        """Forget a table: deleted, or (of another root) no longer referenced."""
        self.readers.pop(table_key(root, name), None)
        reader_name, local = _names(root, name)
        if self.blocks is not None:
            self.blocks.discard_table(reader_name)
        if self.files is not None:
            self.files.discard(local)

    def stats(self) -> CacheStats:
        b, f = self.blocks, self.files
        return CacheStats(
            b.hits if b else 0,
            b.misses if b else 0,
            b.used if b else 0,
            f.hits if f else 0,
            f.misses if f else 0,
            f.used if f else 0,
        )

    def close(self) -> None:
        if self.files is not None:
            self.files.close()


def _names(root: str, name: str) -> tuple[str, str]:
    """A table's reader name (`files.table_label`) and the name of its copy in the file cache."""
    return table_label(root, name), (f"{root_id(root)}-{name}" if root else name)
