"""Builders shared by the compaction service tests: input tables, specs and the reference answer.

Also holds compaction functions the tests inject into worker processes (they must be importable
by a spawned process): `blocking_compaction` parks forever, so a test controls when it stops;
`gated_compaction` runs once the test opens its gate.
`DirWatch` and `snapshot` prove that nothing touched a directory.
"""

import ctypes
import os
import posixpath
import random
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from compaction_service.proto import compaction_pb2 as pb
from statebackend.dfs import filesystem, join
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.table import FsFileSource, TableMeta, TableOptions, TableReader, write_table

OPTIONS = TableOptions(block_size=4096)


def write_tables(
    root: str,
    tables: int,
    entries: int,
    seed: int = 1,
    storage_options: Mapping[str, Any] | None = None,
    value_size: int = 40,
) -> list[TableMeta]:
    """`tables` L0 tables (newest first) of random keys, overlapping, some tombstones."""
    rng = random.Random(seed)
    fs, path = filesystem(join(root, "tables"), storage_options or {})
    fs.makedirs(path, exist_ok=True)
    metas = []
    for n in range(tables):
        keys = sorted({rng.randbytes(12) for _ in range(entries)})
        # b"\x00": the TTL envelope of a value that never expires (statebackend.ttl)
        rows = [
            (k, None if rng.random() < 0.05 else b"\x00" + rng.randbytes(value_size)) for k in keys
        ]
        name = f"in{n:03d}-{uuid.uuid4().hex[:8]}.sst"
        metas.append(write_table(fs, posixpath.join(path, name), name, rows, OPTIONS, "test"))
    return metas[::-1]


def make_spec(
    root: str, tables: list[TableMeta], compaction_id: str | None = None, **overrides: Any
) -> CompactionSpec:
    """A bottommost L0 -> L1 compaction of `tables` (override any spec field by keyword)."""
    fields: dict[str, Any] = dict(
        version=SPEC_VERSION,
        compaction_id=compaction_id or uuid.uuid4().hex[:16],
        db_root=root,
        inputs=(CompactionInput(0, tuple(tables)),),
        output_level=1,
        target_file_size=256 << 10,
        bottommost=True,
        ttl_cutoff_ms=None,
        output_prefix="000001-ctest-",
        table_options=OPTIONS,
    )
    fields.update(overrides)
    return CompactionSpec(**fields)


def set_spec_field(m: pb.CompactionSpec, field: str, value: float) -> str:
    """Set `field` (a path of `convert.SPEC_RANGES`, e.g. `inputs.tables.size`) in `m`, in the
    first element of repeated fields; returns the position an error names (`inputs[0]...`)."""
    *parents, name = field.split(".")
    target: Any = m
    where = []
    for parent in parents:
        target = getattr(target, parent)
        if parent in ("inputs", "tables"):
            target, parent = target[0], f"{parent}[0]"
        where.append(parent)
    setattr(target, name, value)
    return ".".join([*where, name])


def read_outputs(
    root: str, result: CompactionResult, storage_options: Mapping[str, Any] | None = None
) -> list[tuple[bytes, bytes | None]]:
    fs, path = filesystem(join(root, "tables"), storage_options or {})
    rows: list[tuple[bytes, bytes | None]] = []
    for meta in result.outputs:
        source = FsFileSource(fs, posixpath.join(path, meta.name), meta.size)
        rows.extend(TableReader(source, meta.name).scan())
    return rows


def table_names(root: str, storage_options: Mapping[str, Any] | None = None) -> set[str]:
    fs, path = filesystem(join(root, "tables"), storage_options or {})
    return {posixpath.basename(p) for p in fs.ls(path, detail=False)}


def blocking_compaction(
    spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str
) -> CompactionResult:
    """Writes a partial output, then blocks forever (until its worker is killed)."""
    fs, path = filesystem(join(spec.db_root, "tables"), storage_options)
    fs.pipe_file(posixpath.join(path, f"{spec.output_prefix}partial-0000.sst"), b"partial")
    threading.Event().wait()
    raise AssertionError("unreachable")


def gated_compaction(
    spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str
) -> CompactionResult:
    """Marks that it started (file `started-<compaction id>` in the DB root), waits for the file
    `gate` there (at most 120 s: a test that forgets it fails instead of hanging), then compacts
    for real: a test holds a compaction in flight as long as it wants, then lets it finish."""
    fs, root = filesystem(spec.db_root, storage_options)
    fs.pipe_file(posixpath.join(root, f"started-{spec.compaction_id}"), b"")
    deadline = time.monotonic() + 120
    while not fs.exists(posixpath.join(root, "gate")):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.02)
    return run_compaction(spec, storage_options, creator)


def failing_compaction(
    spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str
) -> CompactionResult:
    raise OSError(f"disk on fire while compacting {spec.compaction_id}")


def wait_until(
    predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    """Poll `predicate` (a state the test cannot be notified of) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(0.02)


def lying_compaction(
    spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str
) -> CompactionResult:
    """Compacts for real, then misreports how many entries it wrote."""
    result = run_compaction(spec, storage_options, creator)
    stats = replace(result.stats, output_entries=result.stats.output_entries + 1)
    return replace(result, stats=stats)


class DirWatch:
    """Every open, read, write, creation, deletion or change in some directories, as the kernel
    reports it (Linux inotify): proof that nothing touched them, beyond an unchanged listing."""

    _MASK = 0xFFF  # IN_ACCESS ... IN_DELETE_SELF: every file event but the close-after-read ones
    _EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length

    def __init__(self, *directories: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        for directory in directories:
            wd = self._libc.inotify_add_watch(self._fd, str(directory).encode(), self._MASK)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"cannot watch {directory}")
            self._dirs[wd] = directory

    def events(self) -> list[str]:
        """The events since the last call, as `path: mask` strings."""
        found = []
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                wd, mask, _, length = self._EVENT.unpack_from(data, offset)
                offset += self._EVENT.size
                name = data[offset : offset + length].rstrip(b"\0").decode()
                offset += length
                found.append(f"{self._dirs.get(wd, '?')}/{name}: {mask:#x}")

    def close(self) -> None:
        os.close(self._fd)


def snapshot(directory: Path) -> dict[str, tuple[bytes | str, int]]:
    """Every entry below `directory`: a file's bytes, a link's target, and its mtime (ns)."""
    entries: dict[str, tuple[bytes | str, int]] = {}
    for path in sorted(directory.rglob("*")):
        stat = path.lstat()
        if path.is_symlink():
            content: bytes | str = os.readlink(path)
        else:
            content = path.read_bytes() if path.is_file() else "<dir>"
        entries[str(path.relative_to(directory))] = (content, stat.st_mtime_ns)
    return entries
