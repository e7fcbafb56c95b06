"""A compaction as data (`CompactionSpec` in, `CompactionResult` out) and the one pure function,
`run_compaction`, that turns one into the other. The local compactor and the remote compaction
service run the same function; specs and results cross process and network boundaries as
msgpack-friendly dicts (bytes stay bytes), versioned and validated field by field.

`run_compaction` reads only the table files the spec names (under `db_root/tables/`), merges them
newest first, drops what the spec allows it to drop, and writes new, uniquely named tables under
`db_root/tables/`. It changes nothing else: installing the result (or deleting its outputs) is the
DB's job. On any error it deletes the outputs it wrote and re-raises.

Dropping rules, applied to the newest entry of each key (older ones are shadowed and always go):
- a tombstone is dropped only when `bottommost` (no older data for the key can exist below);
- a value with `ttl.expiry_of(value) <= ttl_cutoff_ms` is dropped when `bottommost`; otherwise it
  becomes a tombstone, so that an older value of the key in a deeper level does not reappear.
"""

import posixpath
import secrets
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress
from typing import Any

from statebackend import dfs
from statebackend.lsm.block import read_field, read_fields, reject_unknown_fields
from statebackend.lsm.merge import merge_batches
from statebackend.lsm.table import (
    Batch,
    FsFileSource,
    TableBuilder,
    TableMeta,
    TableOptions,
    TableReader,
    remove_quietly,
)
from statebackend.ttl import expiry_of

SPEC_VERSION = 1
RESULT_VERSION = 1
TABLES_DIR = "tables"
_READAHEAD = 2 << 20  # bytes of consecutive data blocks read from an input at a time
_PREFETCH_THREADS = 4


def _check_version(data: Mapping[str, Any], expected: int, owner: str) -> None:
    version = read_field(data, "version", int, owner)
    if version != expected:
        raise ValueError(f"{owner}: unsupported version {version} (this code reads {expected})")


def _key_or_none(value: Any, owner: str, name: str) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        raise ValueError(f"{owner}: field {name!r} must hold bytes or None, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class CompactionInput:
    """Input tables of one level: at level 0 each table is a run (newest first); at a level >= 1
    the tables form one sorted run of non-overlapping tables."""

    level: int
    tables: tuple[TableMeta, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "tables": [t.to_dict() for t in self.tables]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompactionInput":
        owner = "CompactionInput"
        reject_unknown_fields(data, cls.__dataclass_fields__, owner)
        tables = read_field(data, "tables", (list, tuple), owner)
        return cls(read_field(data, "level", int, owner), tuple(map(TableMeta.from_dict, tables)))


@dataclass(frozen=True)
class CompactionSpec:
    version: int  # SPEC_VERSION
    compaction_id: str
    db_root: str  # fsspec URL of the DB root (tables under db_root/tables/)
    inputs: tuple[CompactionInput, ...]  # newest first (L0 before Ln before Ln+1)
    output_level: int
    target_file_size: int
    bottommost: bool  # no data older than the inputs exists for their keys: drop tombstones
    ttl_cutoff_ms: int | None  # entries with expiry <= cutoff are expired
    output_prefix: str  # output names: f"{output_prefix}{random token}-{seq:04d}.sst"
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
        if "/" in self.output_prefix:
            raise ValueError(f"CompactionSpec: output_prefix {self.output_prefix!r} contains '/'")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "compaction_id": self.compaction_id,
            "db_root": self.db_root,
            "inputs": [i.to_dict() for i in self.inputs],
            "output_level": self.output_level,
            "target_file_size": self.target_file_size,
            "bottommost": self.bottommost,
            "ttl_cutoff_ms": self.ttl_cutoff_ms,
            "output_prefix": self.output_prefix,
            "table_options": self.table_options.to_dict(),
            "key_range": list(self.key_range),
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompactionSpec":
        owner = "CompactionSpec"
        reject_unknown_fields(data, cls.__dataclass_fields__, owner)
        _check_version(data, SPEC_VERSION, owner)
        key_range = read_field(data, "key_range", (list, tuple), owner)
        if len(key_range) != 2:
            raise ValueError(f"{owner}: field 'key_range' must have 2 items, got {len(key_range)}")
        return cls(
            version=SPEC_VERSION,
            compaction_id=read_field(data, "compaction_id", str, owner),
            db_root=read_field(data, "db_root", str, owner),
            inputs=tuple(
                map(CompactionInput.from_dict, read_field(data, "inputs", (list, tuple), owner))
            ),
            output_level=read_field(data, "output_level", int, owner),
            target_file_size=read_field(data, "target_file_size", int, owner),
            bottommost=read_field(data, "bottommost", bool, owner),
            ttl_cutoff_ms=read_field(data, "ttl_cutoff_ms", (int, type(None)), owner),
            output_prefix=read_field(data, "output_prefix", str, owner),
            table_options=TableOptions.from_dict(read_field(data, "table_options", dict, owner)),
            key_range=(
                _key_or_none(key_range[0], owner, "key_range"),
                _key_or_none(key_range[1], owner, "key_range"),
            ),
            score=float(read_field(data, "score", (float, int), owner)),
        )


_STATS_FIELDS = {
    "input_entries": int,
    "output_entries": int,
    "dropped_tombstones": int,
    "dropped_expired": int,
    "input_bytes": int,
    "output_bytes": int,
    "cpu_seconds": (float, int),
    "wall_seconds": (float, int),
}


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

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STATS_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompactionStats":
        fields = read_fields(data, _STATS_FIELDS, "CompactionStats")
        fields["cpu_seconds"] = float(fields["cpu_seconds"])
        fields["wall_seconds"] = float(fields["wall_seconds"])
        return cls(**fields)


@dataclass(frozen=True)
class CompactionResult:
    """What a compaction produced. `remote` says where it ran: a compactor that got the result
    from a compaction service sets it (`dataclasses.replace`); it is not part of the serialized
    form, since only the receiver knows where the result came from."""

    version: int  # RESULT_VERSION
    compaction_id: str
    outputs: tuple[TableMeta, ...]  # ascending, non-overlapping key ranges
    stats: CompactionStats
    remote: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "compaction_id": self.compaction_id,
            "outputs": [t.to_dict() for t in self.outputs],
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CompactionResult":
        owner = "CompactionResult"
        reject_unknown_fields(data, _SERIALIZED_RESULT_FIELDS, owner)
        _check_version(data, RESULT_VERSION, owner)
        return cls(
            version=RESULT_VERSION,
            compaction_id=read_field(data, "compaction_id", str, owner),
            outputs=tuple(
                map(TableMeta.from_dict, read_field(data, "outputs", (list, tuple), owner))
            ),
            stats=CompactionStats.from_dict(read_field(data, "stats", dict, owner)),
        )


_SERIALIZED_RESULT_FIELDS = ("version", "compaction_id", "outputs", "stats")


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
        self.fs, self.dir = dfs.filesystem(dfs.join(spec.db_root, TABLES_DIR), storage_options)
        self.token = secrets.token_hex(8)  # outputs of a retried or duplicated run never collide
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
                tables = sorted(compaction_input.tables, key=lambda t: t.smallest)
                for a, b in zip(tables, tables[1:], strict=False):
                    if not a.largest < b.smallest:
                        raise ValueError(
                            f"compaction {self.spec.compaction_id}: level {compaction_input.level} "
                            f"input tables {a.name} and {b.name} overlap"
                        )
                runs.append(self.run(tuple(tables)))
        return runs

    def run(self, tables: tuple[TableMeta, ...]) -> Iterator[Batch]:
        """The entries of consecutive `tables` within the key range; opens each table lazily."""
        start, end = self.spec.key_range
        for meta in tables:
            if (start is not None and meta.largest < start) or (
                end is not None and meta.smallest >= end
            ):
                continue
            source = _CountingSource(self.fs, posixpath.join(self.dir, meta.name), meta.size)
            self.sources.append(source)
            reader = TableReader(source, meta.name)
            for batch in reader.iter_batches(start, end, _READAHEAD, self.prefetch):
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
        if not self.written:
            self.fs.makedirs(self.dir, exist_ok=True)
        name = f"{spec.output_prefix}{self.token}-{len(self.written):04d}.sst"
        path = posixpath.join(self.dir, name)
        self.written.append(path)
        self.sink = self.fs.open(path, "wb")
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
    """Runs `spec`: merges its inputs into new tables under `db_root/tables/`, returns them.

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
