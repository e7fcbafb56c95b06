"""LsmDB against rocksdict on the same data: puts, warm random gets, 100-entry prefix scans, and
compaction throughput.

Both stores get 16-byte keys (an 8-byte group id and an 8-byte item id, so that a group is a
100-entry prefix) and 100-byte values, inserted in random order. RocksDB is set up like LsmDB's
tables (WAL off, a 10-bit bloom filter, 16 KiB blocks, zstd, a block cache of the same size);
LsmDB runs on file:// in a temporary directory with its default options. After the puts, both
flush and compact fully before gets and scans are measured. Figures are operations per second;
`*_ratio` is LsmDB / rocksdict (targets: put >= 1.0, get >= 0.7, scan >= 0.5).

`compaction_ratio` compares entries per second of `run_compaction` merging four overlapping L0
runs into L1 with rocksdict's `compact_range` over the same four runs flushed as L0 files.
"""

import os
import posixpath
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteOptions

from statebackend.dfs import filesystem
from statebackend.layout import prefix_end
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.db import LsmDB, LsmOptions
from statebackend.lsm.table import TableOptions, write_table

GROUP = 100  # entries per prefix
# Both block caches hold the whole data set (LsmDB caches decoded blocks, ~2.3x the table bytes),
# so "warm" gets and scans read no file.
CACHE_BYTES = 1 << 30
RUNS = 4  # overlapping runs in the compaction comparison


def _data(n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    groups = rng.sample(range(1 << 40), n // GROUP)
    keys = [g.to_bytes(8, "big") + i.to_bytes(8, "big") for g in groups for i in range(GROUP)]
    rng.shuffle(keys)
    # values are TTL envelopes that never expire (first byte 0), like the state layer's
    values = [b"\x00" + rng.randbytes(99) for _ in range(len(keys))]
    return keys, values


def _rocks_options() -> Options:
    """RocksDB set up like LsmDB's tables: 10-bit bloom filter, 16 KiB blocks, zstd, equal cache."""
    defaults = TableOptions()
    opts = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_bloom_filter(defaults.bloom_bits_per_key, False)
    table.set_block_size(defaults.block_size)
    table.set_block_cache(Cache(CACHE_BYTES))
    opts.set_block_based_table_factory(table)
    opts.set_compression_type(DBCompressionType.zstd())
    opts.create_if_missing(True)
    return opts


def _rocks(path: str) -> Rdict:
    db = Rdict(path, _rocks_options())
    wo = WriteOptions()
    wo.disable_wal = True
    db.set_write_options(wo)
    return db


def _ops_per_s(n: int, fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _measure(
    put: Callable[[bytes, bytes], None],
    get: Callable[[bytes], Any],
    scan: Callable[[bytes, bytes], int],
    settle: Callable[[], None],
    keys: list[bytes],
    values: list[bytes],
    probes: list[bytes],
    prefixes: list[bytes],
) -> dict[str, float]:
    def puts() -> None:
        for k, v in zip(keys, values, strict=True):
            put(k, v)

    def gets() -> None:
        for k in probes:
            get(k)

    def scans() -> None:
        for p in prefixes:
            if scan(p, prefix_end(p)) != GROUP:
                raise AssertionError("a prefix scan did not see its 100 entries")

    put_ops = _ops_per_s(len(keys), puts)
    settle()
    gets()  # warm the caches
    get_ops = _ops_per_s(len(probes), gets)
    scans()
    scan_ops = _ops_per_s(len(prefixes), scans)
    return {"put": put_ops, "get": get_ops, "scan": scan_ops}


def _lsm(root: str, keys: list[bytes], values: list[bytes], probes, prefixes) -> dict[str, float]:
    db = LsmDB(root, LsmOptions(block_cache_bytes=CACHE_BYTES))

    def settle() -> None:  # like rocksdict's below: flush, then one full compaction
        db.compact()

    try:
        return _measure(
            db.put,
            db.get,
            lambda s, e: sum(1 for _ in db.scan(s, e)),
            settle,
            keys,
            values,
            probes,
            prefixes,
        )
    finally:
        db.close()


def _rocksdict(path: str, keys, values, probes, prefixes) -> dict[str, float]:
    db = _rocks(path)

    def scan(start: bytes, end: bytes) -> int:
        it = db.iter()
        it.seek(start)
        n = 0
        while it.valid() and it.key() < end:
            n += 1
            it.next()
        return n

    def settle() -> None:
        db.flush()
        db.compact_range(None, None)

    try:
        return _measure(db.put, db.get, scan, settle, keys, values, probes, prefixes)
    finally:
        db.close()


def _compaction(workdir: str, keys: list[bytes], values: list[bytes]) -> tuple[float, float]:
    """(LsmDB entries/s, rocksdict entries/s) merging RUNS overlapping runs of the data."""
    runs = [sorted(zip(keys[i::RUNS], values[i::RUNS], strict=True)) for i in range(RUNS)]
    root = f"file://{workdir}/compaction"
    fs, path = filesystem(root, {})
    options = TableOptions()
    metas = [
        write_table(
            fs,
            posixpath.join(path, "tables", f"run-{i}.sst"),
            f"run-{i}.sst",
            run,
            options,
            "bench",
        )
        for i, run in enumerate(runs)
    ]
    spec = CompactionSpec(
        version=SPEC_VERSION,
        compaction_id="bench",
        db_root=root,
        inputs=tuple(CompactionInput(0, (m,)) for m in reversed(metas)),
        output_level=1,
        target_file_size=64 << 20,
        bottommost=True,
        ttl_cutoff_ms=None,
        output_prefix="out-",
        table_options=options,
    )
    lsm = _ops_per_s(len(keys), lambda: run_compaction(spec))

    opts = _rocks_options()
    opts.set_disable_auto_compactions(True)
    db = Rdict(os.path.join(workdir, "rocks-compaction"), opts)
    wo = WriteOptions()
    wo.disable_wal = True
    db.set_write_options(wo)
    for run in runs:
        for k, v in run:
            db.put(k, v)
        db.flush()
    rocks = _ops_per_s(len(keys), lambda: db.compact_range(None, None))
    db.close()
    return lsm, rocks


def run(quick: bool = False) -> dict[str, float | int]:
    n = 100_000 if quick else 1_000_000
    keys, values = _data(n, seed=1)
    rng = random.Random(2)
    probes = rng.sample(keys, min(len(keys), 50_000))
    prefixes = [k[:8] for k in rng.sample(keys, 2_000 if quick else 10_000)]
    workdir = tempfile.mkdtemp(prefix="bench-lsm-")
    try:
        lsm = _lsm(f"file://{workdir}/lsm", keys, values, probes, prefixes)
        rocks = _rocksdict(os.path.join(workdir, "rocks"), keys, values, probes, prefixes)
        lsm_compaction, rocks_compaction = _compaction(workdir, keys, values)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "entries": len(keys),
        "lsm_put_ops": lsm["put"],
        "lsm_get_ops": lsm["get"],
        "lsm_scan_ops": lsm["scan"],
        "lsm_compaction_entries_per_s": lsm_compaction,
        "rocksdict_put_ops": rocks["put"],
        "rocksdict_get_ops": rocks["get"],
        "rocksdict_scan_ops": rocks["scan"],
        "rocksdict_compaction_entries_per_s": rocks_compaction,
        "put_ratio": lsm["put"] / rocks["put"],
        "get_ratio": lsm["get"] / rocks["get"],
        "scan_ratio": lsm["scan"] / rocks["scan"],
        "compaction_ratio": lsm_compaction / rocks_compaction,
    }
