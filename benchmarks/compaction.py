"""One compaction three ways: in-process, through the service (1 worker), and through the service
with 2 workers and subcompactions.

The same spec (L0 tables of random keys merged into L1) runs (a) in this process with
`run_compaction`, (b) through `RemoteCompactor` against a service with one worker and no
subcompactions, and (c) against a service with two workers that splits it into two key ranges.
Each variant gets two warm-up runs, then the median of `repeats` runs is reported (outputs are
deleted between runs). Figures:

- `remote_overhead` = time(b) / time(a): what gRPC, the queue and the worker process cost
  (target <= 1.15);
- `subcompaction_speedup` = time(b) / time(c) (target >= 1.6 on 2 cores; only meaningful when
  the machine is otherwise idle, hence `load_average_1m_before`).
"""

import os
import posixpath
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable

from compaction_service.client import RemoteCompactor
from compaction_service.server import BackgroundService, ServiceConfig
from statebackend.dfs import filesystem
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
    run_compaction,
)
from statebackend.lsm.table import TableMeta, TableOptions, write_table


def run(quick: bool = False) -> dict[str, float | int | str]:
    tables, entries, repeats = (4, 100_000, 3) if quick else (8, 200_000, 5)
    load_before = os.getloadavg()[0]  # other work on the machine skews the parallel figure
    workdir = tempfile.mkdtemp(prefix="bench-compaction-")
    root = f"file://{workdir}/db"
    try:
        spec = _spec(root, _write_inputs(root, tables, entries))
        in_process = _median(repeats, root, lambda: run_compaction(spec))
        one = _through_service(spec, root, workdir, repeats, workers=1, split=False)
        two = _through_service(spec, root, workdir, repeats, workers=2, split=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "input_tables": tables,
        "input_entries": tables * entries,
        "input_bytes": sum(t.size for i in spec.inputs for t in i.tables),
        "repeats": repeats,
        "cpus": os.cpu_count() or 0,
        "load_average_1m_before": load_before,
        "in_process_s": in_process,
        "service_1_worker_s": one,
        "service_2_workers_subcompactions_s": two,
        "remote_overhead": one / in_process,
        "subcompaction_speedup": one / two,
    }


def _write_inputs(root: str, tables: int, entries: int) -> list[TableMeta]:
    rng = random.Random(42)
    fs, path = filesystem(f"{root}/tables", {})
    fs.makedirs(path, exist_ok=True)
    metas = []
    for n in range(tables):
        keys = sorted({rng.randbytes(16) for _ in range(entries)})
        rows = [(k, b"\x00" + rng.randbytes(64)) for k in keys]  # TTL envelope: never expires
        name = f"input{n:03d}.sst"
        target = posixpath.join(path, name)
        metas.append(write_table(fs, target, name, rows, TableOptions(), "bench"))
    return metas[::-1]  # L0 runs are newest first


def _spec(root: str, inputs: list[TableMeta]) -> CompactionSpec:
    return CompactionSpec(
        version=SPEC_VERSION,
        compaction_id=uuid.uuid4().hex[:16],
        db_root=root,
        inputs=(CompactionInput(0, tuple(inputs)),),
        output_level=1,
        target_file_size=8 << 20,
        bottommost=True,
        ttl_cutoff_ms=None,
        output_prefix="bench-",
        table_options=TableOptions(),
    )


def _median(repeats: int, root: str, compact: Callable[[], CompactionResult]) -> float:
    """Median wall time of `repeats` runs after two warm-ups; deletes outputs after each run."""
    fs, path = filesystem(f"{root}/tables", {})
    times = []
    for attempt in range(repeats + 2):
        start = time.perf_counter()
        result = compact()
        elapsed = time.perf_counter() - start
        for t in result.outputs:
            fs.rm_file(posixpath.join(path, t.name))
        if attempt >= 2:  # the first runs of a fresh worker process are slower
            times.append(elapsed)
    return statistics.median(times)


def _through_service(
    spec: CompactionSpec, root: str, workdir: str, repeats: int, workers: int, split: bool
) -> float:
    config = ServiceConfig(
        allowed_roots=(f"file://{workdir}",),
        workers=workers,
        policy="least_loaded",
        subcompaction_min_bytes=1 << 20,
    )
    with BackgroundService(config) as service:
        client = RemoteCompactor(
            [f"127.0.0.1:{service.port}"], allow_subcompactions=split, deadline_s=600
        )
        try:
            elapsed = _median(repeats, root, lambda: client.submit(spec, {}).result())
            if client.stats.fallbacks:
                raise RuntimeError(f"{client.stats.fallbacks} compactions did not run remotely")
            return elapsed
        finally:
            client.close()
