"""Splitting one compaction into key-range subcompactions, and joining their results.

A subcompaction is the same spec with a narrower `key_range`; `run_compaction` reads and writes
only the keys in its range, so pieces with disjoint, adjacent ranges produce disjoint, ascending
outputs, and their concatenation is exactly what the whole compaction would have produced (split
into a few more files).

Boundaries come from the input tables' metadata alone (no file is read): each table's bytes are
assumed spread evenly over its effective key range (a clipped reference counts its whole file),
keys are projected to integers (the 8 bytes after the common prefix of the compacted range), and
the boundaries cut the total into equal parts. Physical keys start with a hashed key group, so
this is close to even in practice.
"""

from collections.abc import Sequence
from dataclasses import replace

from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, CompactionStats
from statebackend.lsm.meta import TableMeta

_WIDTH = 8  # bytes of a key (after the common prefix) that the projection looks at


def input_bytes(spec: CompactionSpec) -> int:
    return sum(t.size for i in spec.inputs for t in i.tables)


def _common_prefix(a: bytes, b: bytes) -> bytes:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def split_ranges(spec: CompactionSpec, pieces: int) -> list[tuple[bytes | None, bytes | None]]:
    """Up to `pieces` adjacent key ranges covering `spec.key_range`, of about equal input bytes."""
    start, end = spec.key_range
    tables = [t for i in spec.inputs for t in i.tables]
    if pieces < 2 or not tables:
        return [spec.key_range]
    lo = min(t.lo for t in tables)
    lo = lo if start is None else max(lo, start)
    hi = max(t.hi for t in tables)
    hi = hi if end is None else min(hi, end)
    if lo >= hi:
        return [spec.key_range]
    prefix = _common_prefix(lo, hi)

    def project(key: bytes) -> int:
        if not key.startswith(prefix):
            return 0 if key < prefix else (1 << (8 * _WIDTH)) - 1
        return int.from_bytes(key[len(prefix) : len(prefix) + _WIDTH].ljust(_WIDTH, b"\0"), "big")

    spans = [(project(t.lo), project(t.hi), t.size) for t in tables]
    x_lo, x_hi = project(lo), project(hi)

    def weight_below(x: int) -> float:
        """Input bytes with projected key < x, under the even-spread assumption."""
        total = 0.0
        for a, b, size in spans:
            if x > b:
                total += size
            elif x > a:
                total += size * (x - a) / (b - a + 1)
        return total

    total = weight_below(x_hi + 1)
    bounds: list[bytes] = []
    left = x_lo
    for k in range(1, pieces):
        goal = total * k / pieces
        a, b = left + 1, x_hi  # smallest x in (left, x_hi] with weight_below(x) >= goal
        if a > b:
            break
        while a < b:
            mid = (a + b) // 2
            if weight_below(mid) >= goal:
                b = mid
            else:
                a = mid + 1
        key = prefix + a.to_bytes(_WIDTH, "big")
        if (start is not None and key <= start) or (end is not None and key >= end):
            continue
        bounds.append(key)
        left = a
    edges: list[bytes | None] = [start, *bounds, end]
    return list(zip(edges, edges[1:], strict=False))


def subspecs(spec: CompactionSpec, pieces: int) -> list[CompactionSpec]:
    """The subcompactions of `spec` (just `[spec]` when it does not split)."""
    ranges = split_ranges(spec, pieces)
    if len(ranges) == 1:
        return [spec]
    return [replace(spec, key_range=r) for r in ranges]


def join_results(compaction_id: str, results: Sequence[CompactionResult]) -> CompactionResult:
    """One result from the results of adjacent subcompactions, given in key order."""
    outputs: tuple[TableMeta, ...] = tuple(t for r in results for t in r.outputs)
    stats = [r.stats for r in results]
    return CompactionResult(
        version=results[0].version,
        compaction_id=compaction_id,
        outputs=outputs,
        stats=CompactionStats(
            input_entries=sum(s.input_entries for s in stats),
            output_entries=sum(s.output_entries for s in stats),
            dropped_tombstones=sum(s.dropped_tombstones for s in stats),
            dropped_expired=sum(s.dropped_expired for s in stats),
            input_bytes=sum(s.input_bytes for s in stats),
            output_bytes=sum(s.output_bytes for s in stats),
            cpu_seconds=sum(s.cpu_seconds for s in stats),
            wall_seconds=max(s.wall_seconds for s in stats),  # the pieces run in parallel
        ),
    )
