"""Conversions between the LSM's compaction dataclasses and the protocol's messages.

Invariant: `spec_from_proto(spec_to_proto(s)) == s` and the same for results. Decoding validates
every field through the dataclasses' own checks, and every numeric field of a spec against its
range in `SPEC_RANGES` (the one place the bounds live; docs/compaction-service.md lists them), and
raises `ValueError` naming the field (the server answers it with INVALID_ARGUMENT); nothing
undecodable, and nothing that would make a worker allocate or loop without bound, reaches a worker.
"""

from compaction_service.proto import compaction_pb2 as pb
from statebackend.lsm.compaction_job import (
    RESULT_VERSION,
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    CompactionStats,
)
from statebackend.lsm.meta import TableMeta, TableOptions

_MAX_MS = (1 << 63) - 1  # a time in ms since the epoch: anything an int64 holds
_MAX_TABLE = 1 << 40  # 1 TiB, and as many entries: far beyond any table the LSM writes

# Inclusive bounds of every numeric field of a CompactionSpec message, by field path (a repeated
# field's elements share one entry). `bloom_bits_per_key` and `block_size` size what a worker
# builds in memory, `target_file_size` how much one output buffers; levels are small numbers.
SPEC_RANGES: dict[str, tuple[float, float]] = {
    "inputs.level": (0, 63),
    "inputs.tables.size": (1, _MAX_TABLE),
    "inputs.tables.entries": (0, _MAX_TABLE),
    "inputs.tables.tombstones": (0, _MAX_TABLE),
    "inputs.tables.min_expiry_ms": (0, _MAX_MS),
    "output_level": (0, 63),
    "target_file_size": (1, 1 << 30),  # 1 GiB
    "ttl_cutoff_ms": (0, _MAX_MS),
    "table_options.block_size": (1, 64 << 20),  # 64 MiB
    "table_options.bloom_bits_per_key": (0, 64),
    "table_options.compression_level": (-(1 << 17), 22),  # zstd's own range
    "score": (0.0, 1e12),  # finite: NaN and infinity are refused
}


def range_text(field: str) -> str:
    """`field`'s range as errors and docs/compaction-service.md show it, e.g. `[0, 64]`."""
    return "[{}, {}]".format(*(int(x) if float(x).is_integer() else x for x in SPEC_RANGES[field]))


def _check_range(field: str, value: float, path: str | None = None) -> None:
    """ValueError naming `path` (default: `field`) when `value` is outside `field`'s range."""
    low, high = SPEC_RANGES[field]
    if not low <= value <= high:  # also false for NaN
        raise ValueError(
            f"spec field {path or field!r} is {value}, outside its range {range_text(field)}"
        )


def _check_ranges(m: pb.CompactionSpec) -> None:
    """Every numeric field of `m` lies within SPEC_RANGES; ValueError names the first that does
    not (with its position, e.g. `inputs[0].tables[3].size`)."""
    for i, compaction_input in enumerate(m.inputs):
        _check_range("inputs.level", compaction_input.level, f"inputs[{i}].level")
        for j, table in enumerate(compaction_input.tables):
            for name in ("size", "entries", "tombstones", "min_expiry_ms"):
                if name != "min_expiry_ms" or table.HasField(name):
                    path = f"inputs[{i}].tables[{j}].{name}"
                    _check_range(f"inputs.tables.{name}", getattr(table, name), path)
    for name in ("output_level", "target_file_size", "score"):
        _check_range(name, getattr(m, name))
    if m.HasField("ttl_cutoff_ms"):
        _check_range("ttl_cutoff_ms", m.ttl_cutoff_ms)
    for name in ("block_size", "bloom_bits_per_key", "compression_level"):
        _check_range(f"table_options.{name}", getattr(m.table_options, name))


def _table_to_proto(t: TableMeta) -> pb.TableMeta:
    return pb.TableMeta(
        name=t.name,
        size=t.size,
        smallest=t.smallest,
        largest=t.largest,
        entries=t.entries,
        tombstones=t.tombstones,
        min_expiry_ms=t.min_expiry_ms,
        creator=t.creator,
        root=t.root,
        clip_start=t.clip_start,
        clip_end=t.clip_end,
    )


def _table_from_proto(m: pb.TableMeta) -> TableMeta:
    if not m.name:
        raise ValueError("table meta without a name")
    return TableMeta(
        name=m.name,
        size=m.size,
        smallest=m.smallest,
        largest=m.largest,
        entries=m.entries,
        tombstones=m.tombstones,
        min_expiry_ms=m.min_expiry_ms if m.HasField("min_expiry_ms") else None,
        creator=m.creator,
        root=m.root,
        clip_start=m.clip_start if m.HasField("clip_start") else None,
        clip_end=m.clip_end if m.HasField("clip_end") else None,
    )


def spec_to_proto(spec: CompactionSpec) -> pb.CompactionSpec:
    o = spec.table_options
    start, end = spec.key_range
    return pb.CompactionSpec(
        spec_version=spec.version,
        compaction_id=spec.compaction_id,
        db_root=spec.db_root,
        inputs=[
            pb.CompactionInput(level=i.level, tables=[_table_to_proto(t) for t in i.tables])
            for i in spec.inputs
        ],
        output_level=spec.output_level,
        target_file_size=spec.target_file_size,
        bottommost=spec.bottommost,
        ttl_cutoff_ms=spec.ttl_cutoff_ms,
        output_prefix=spec.output_prefix,
        table_options=pb.TableOptions(
            block_size=o.block_size,
            bloom_bits_per_key=o.bloom_bits_per_key,
            compression=o.compression,
            compression_level=o.compression_level,
        ),
        key_range=pb.KeyRange(start=start, end=end),
        score=spec.score,
    )


def spec_from_proto(m: pb.CompactionSpec) -> CompactionSpec:
    """The spec a request carries; ValueError names the first field that is not acceptable."""
    if m.spec_version != SPEC_VERSION:
        raise ValueError(f"unsupported spec_version {m.spec_version} (this server: {SPEC_VERSION})")
    for name in ("compaction_id", "db_root", "output_prefix"):
        if not getattr(m, name):
            raise ValueError(f"spec field {name!r} is empty")
    if not m.HasField("table_options"):
        raise ValueError("spec field 'table_options' is missing")
    if not any(i.tables for i in m.inputs):
        raise ValueError("spec has no input tables")
    _check_ranges(m)
    o = m.table_options
    r = m.key_range
    return CompactionSpec(
        version=m.spec_version,
        compaction_id=m.compaction_id,
        db_root=m.db_root,
        inputs=tuple(
            CompactionInput(i.level, tuple(map(_table_from_proto, i.tables))) for i in m.inputs
        ),
        output_level=m.output_level,
        target_file_size=m.target_file_size,
        bottommost=m.bottommost,
        ttl_cutoff_ms=m.ttl_cutoff_ms if m.HasField("ttl_cutoff_ms") else None,
        output_prefix=m.output_prefix,
        table_options=TableOptions(
            block_size=o.block_size,
            bloom_bits_per_key=o.bloom_bits_per_key,
            compression=o.compression,
            compression_level=o.compression_level,
        ),
        key_range=(
            r.start if r.HasField("start") else None,
            r.end if r.HasField("end") else None,
        ),
        score=m.score,
    )


def result_to_proto(result: CompactionResult) -> pb.CompactionResult:
    s = result.stats
    return pb.CompactionResult(
        result_version=result.version,
        compaction_id=result.compaction_id,
        outputs=[_table_to_proto(t) for t in result.outputs],
        stats=pb.CompactionStats(
            input_entries=s.input_entries,
            output_entries=s.output_entries,
            dropped_tombstones=s.dropped_tombstones,
            dropped_expired=s.dropped_expired,
            input_bytes=s.input_bytes,
            output_bytes=s.output_bytes,
            cpu_seconds=s.cpu_seconds,
            wall_seconds=s.wall_seconds,
        ),
    )


def result_from_proto(m: pb.CompactionResult) -> CompactionResult:
    if m.result_version != RESULT_VERSION:
        raise ValueError(f"unsupported result_version {m.result_version}")
    if not m.HasField("stats"):
        raise ValueError("result without stats")
    s = m.stats
    return CompactionResult(
        version=m.result_version,
        compaction_id=m.compaction_id,
        outputs=tuple(map(_table_from_proto, m.outputs)),
        stats=CompactionStats(
            input_entries=s.input_entries,
            output_entries=s.output_entries,
            dropped_tombstones=s.dropped_tombstones,
            dropped_expired=s.dropped_expired,
            input_bytes=s.input_bytes,
            output_bytes=s.output_bytes,
            cpu_seconds=s.cpu_seconds,
            wall_seconds=s.wall_seconds,
        ),
    )
