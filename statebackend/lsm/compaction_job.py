"""A compaction as data (`CompactionSpec` in, `CompactionResult` out) and the one pure function,
`run_compaction`, that turns one into the other. The local compactor and the remote compaction
service run the same function. Specs and results are pickled between the processes of one
machine; over the network they travel as the compaction service's protobuf messages
(`compaction_service/proto`), the one wire format.

`run_compaction` reads only the table files the spec names, each from its root (the DB's own,
`db_root`, unless the input names another) and only the keys inside its effective range (its clip,
docs/lsm-protocol.md "Table references"), merges them newest first, drops what the spec allows it
to drop, and writes new tables into the DB's own tables folder, named under the spec's output
prefix (`files.compaction_output_name`). It changes nothing else: installing the
result or deleting its outputs is the DB's job (docs/lsm-protocol.md). On any error it deletes
the outputs it wrote and re-raises.

Dropping rules, applied to the newest entry of each key (older ones are shadowed and always go):
- a tombstone is dropped only when `bottommost` (no older data for the key can exist below);
- a value with `ttl.expiry_of(value) <= ttl_cutoff_ms` is dropped when `bottommost`; otherwise it
  becomes a tombstone, so that an older value of the key in a deeper level does not reappear.
"""

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress
from typing import Any

from statebackend import dfs
from statebackend.lsm.files import (
    compaction_output_name,
    is_plain_name,
    new_output_token,
    open_for_writing,
    table_label,
    table_path,
)
from statebackend.lsm.merge import merge_batches
from statebackend.lsm.meta import TableMeta, TableOptions
from statebackend.lsm.table import Batch, FsFileSource, TableBuilder, TableReader, remove_quietly
from statebackend.ttl import expiry_of

SPEC_VERSION = 1
RESULT_VERSION = 1
_READAHEAD = 2 << 20  # bytes of consecutive data blocks read from an input at a time
_PREFETCH_THREADS = 4


@dataclass(frozen=True)
class CompactionInput:
    """Input tables of one level: at level 0 each table is a run (newest first); at a level >= 1
    the tables form one sorted run of references whose effective ranges do not overlap."""

    level: int
    tables: tuple[TableMeta, ...]


@dataclass(frozen=True)
class CompactionSpec:
    version: int  # SPEC_VERSION
    compaction_id: str
    db_root: str  # fsspec URL of the DB root: where the outputs go, and inputs without a root are
    inputs: tuple[CompactionInput, ...]  # newest first (L0 before Ln before Ln+1)
    output_level: int
    target_file_size: int
    bottommost: bool  # no data older than the inputs exists for their keys: drop tombstones
    ttl_cutoff_ms: int | None  # entries with expiry <= cutoff are expired
    output_prefix: str  # every output is named files.compaction_output_name(output_prefix, ...)
    table_options: TableOptions
    key_range: tuple[bytes | None, bytes | None] = (None, None)  # [start, end), None: unbounded
    score: float = 0.0  # priority hint for schedulers

    def __post_init__(self) -> None:
        if self.version != SPEC_VERSION:
            raise ValueError(f"CompactionSpec: unsupported version {self.version}")
        if self.target_file_size < 1:
            raise ValueError(f"CompactionSpec: target_file_size {self.target_file_size} < 1")
        if self.output_level < 0 or any(i.level < 0 for i in self.inputs):
            raise ValueError("CompactionSpec: levels must be >= 0")
        start, end = self.key_range
        if start is not None and end is not None and not start < end:
            raise ValueError(f"CompactionSpec: empty key_range {self.key_range}")
        if not is_plain_name(self.output_prefix):
            raise ValueError(
                f"CompactionSpec: output_prefix {self.output_prefix!r} is not a plain file name"
            )


@dataclass(frozen=True)
class CompactionStats:
    input_entries: int  # entries read (within key_range)
    output_entries: int
    dropped_tombstones: int  # tombstones dropped because the compaction is bottommost
    dropped_expired: int  # expired values dropped (bottommost) or turned into tombstones
    input_bytes: int  # bytes read from input files
    output_bytes: int
    cpu_seconds: float  # process CPU time (time.process_time) spent in run_compaction
    wall_seconds: float


@dataclass(frozen=True)
class CompactionResult:
    """What a compaction produced (`files.validate_result` checks it against its spec).

    `remote` says where it ran: a compactor that got the result from a compaction service sets it
    (`dataclasses.replace`); it is not sent over the wire, since only the receiver knows where
    the result came from."""

    version: int  # RESULT_VERSION
    compaction_id: str
    outputs: tuple[TableMeta, ...]  # ascending, non-overlapping key ranges
    stats: CompactionStats
    remote: bool = False


class _CountingSource(FsFileSource):
    """An input file that counts the bytes read from it."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        super().__init__(fs, path, size)
        self.read_bytes = 0

    def read(self, offset: int, length: int) -> bytes:
        data = super().read(offset, length)
        self.read_bytes += len(data)
        return data


def _expiry(value: bytes | None) -> int | None:
    return expiry_of(value) if value else None


class _Job:
    """The state of one run of `run_compaction`."""

    def __init__(self, spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str):
        self.spec = spec
        self.creator = creator
        self.storage_options = storage_options
        self.fs, self.root = dfs.filesystem(spec.db_root, storage_options)
        self.roots: dict[str, tuple[Any, str]] = {"": (self.fs, self.root)}  # input roots
        self.token = new_output_token()  # outputs of a retried or duplicated run never collide
        self.sources: list[_CountingSource] = []
        self.outputs: list[TableMeta] = []
        self.written: list[str] = []  # every output path created, including the open one
        self.sink: Any = None
        self.builder: TableBuilder | None = None
        self.input_entries = 0
        self.dropped_tombstones = 0
        self.dropped_expired = 0
        self.may_expire = any(t.min_expiry_ms is not None for i in spec.inputs for t in i.tables)
        # Reads the next chunk of every input (I/O, checksums, decompression) in the background.
        self.prefetch = ThreadPoolExecutor(
            max_workers=_PREFETCH_THREADS, thread_name_prefix="compaction-prefetch"
        )

    def runs(self) -> list[Iterator[Batch]]:
        """The input runs, newest first."""
        runs = []
        for compaction_input in self.spec.inputs:
            if compaction_input.level == 0:
                runs.extend(self.run((t,)) for t in compaction_input.tables)
            else:
                tables = sorted(compaction_input.tables, key=lambda t: t.lo)
                for a, b in zip(tables, tables[1:], strict=False):
                    if not a.hi <= b.lo:
                        raise ValueError(
                            f"compaction {self.spec.compaction_id}: level {compaction_input.level} "
                            f"input tables {a.name} and {b.name} overlap"
                        )
                runs.append(self.run(tuple(tables)))
        return runs

    def location(self, root: str) -> tuple[Any, str]:
        """The file system and path of an input's root ("": the DB's own)."""
        if root not in self.roots:
            self.roots[root] = dfs.filesystem(root, self.storage_options)
        return self.roots[root]

    def run(self, tables: tuple[TableMeta, ...]) -> Iterator[Batch]:
        """The entries of consecutive `tables` within the key range and each one's effective
        range; opens each table lazily."""
        start, end = self.spec.key_range
        for meta in tables:
            lo = meta.lo if start is None else max(start, meta.lo)
            hi = meta.hi if end is None else min(end, meta.hi)
            if lo >= hi:
                continue
            fs, root = self.location(meta.root)
            source = _CountingSource(fs, table_path(root, meta.name), meta.size)
            self.sources.append(source)
            reader = TableReader(source, table_label(meta.root, meta.name))
            for batch in reader.iter_batches(lo, hi, _READAHEAD, self.prefetch):
                self.input_entries += len(batch[0])
                yield batch

    def compact(self) -> None:
        spec = self.spec
        cutoff = spec.ttl_cutoff_ms
        if cutoff is not None and all(
            t.min_expiry_ms is None or t.min_expiry_ms > cutoff
            for i in spec.inputs
            for t in i.tables
        ):
            cutoff = None  # nothing in the inputs can have expired
        for keys, values in merge_batches(self.runs()):
            if spec.bottommost and None in values:
                keep = [v is not None for v in values]
                self.dropped_tombstones += len(keep) - sum(keep)
                keys, values = list(compress(keys, keep)), list(compress(values, keep))
            if cutoff is not None:
                expired = [e is not None and e <= cutoff for e in map(_expiry, values)]
                if any(expired):
                    self.dropped_expired += sum(expired)
                    if spec.bottommost:
                        keep = [not x for x in expired]
                        keys, values = list(compress(keys, keep)), list(compress(values, keep))
                    else:
                        values = [None if x else v for v, x in zip(values, expired, strict=True)]
            self.write(keys, values)
        if self.builder is not None:
            self.finish_output()

    def write(self, keys: list[bytes], values: list[bytes | None]) -> None:
        """Adds a batch to the outputs, starting a new one at each target_file_size boundary."""
        pos = 0
        while pos < len(keys):
            if self.builder is None:
                self.open_output()
                assert self.builder is not None
            rest_keys, rest_values = (keys, values) if pos == 0 else (keys[pos:], values[pos:])
            added = self.builder.add_batch(
                rest_keys, rest_values, self.spec.target_file_size, verify=False
            )
            pos += added
            if pos < len(keys):
                self.finish_output()

    def open_output(self) -> None:
        spec = self.spec
        name = compaction_output_name(spec.output_prefix, self.token, len(self.written))
        path = table_path(self.root, name)
        self.written.append(path)
        self.sink = open_for_writing(self.fs, path)
        self.builder = TableBuilder(
            self.sink, spec.table_options, self.creator, name, may_expire=self.may_expire
        )

    def finish_output(self) -> None:
        assert self.builder is not None
        meta = self.builder.finish()
        self.builder = None
        sink, self.sink = self.sink, None
        sink.close()
        self.outputs.append(meta)

    def abort(self) -> None:
        """Deletes every output written so far (best effort; the caller re-raises)."""
        if self.sink is not None:
            try:
                self.sink.close()
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        for path in self.written:
            remove_quietly(self.fs, path)


def run_compaction(
    spec: CompactionSpec,
    storage_options: Mapping[str, Any] | None = None,
    creator: str | None = None,
) -> CompactionResult:
    """Runs `spec`: merges its inputs (from their roots, within their clips) into new tables in
    the DB's own tables folder, and returns them.

    `creator` is recorded in the outputs (default "compaction:<id>"; a remote worker may pass
    "remote:<host>"). On any error, deletes the outputs it wrote and re-raises.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    job = _Job(spec, storage_options or {}, creator or f"compaction:{spec.compaction_id}")
    try:
        job.compact()
    except BaseException:
        job.abort()
        raise
    finally:
        job.prefetch.shutdown(cancel_futures=True)
    stats = CompactionStats(
        input_entries=job.input_entries,
        output_entries=sum(t.entries for t in job.outputs),
        dropped_tombstones=job.dropped_tombstones,
        dropped_expired=job.dropped_expired,
        input_bytes=sum(s.read_bytes for s in job.sources),
        output_bytes=sum(t.size for t in job.outputs),
        cpu_seconds=time.process_time() - cpu,
        wall_seconds=time.perf_counter() - wall,
    )
    return CompactionResult(RESULT_VERSION, spec.compaction_id, tuple(job.outputs), stats)
