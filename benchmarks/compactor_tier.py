"""The compactor tier's capacity model, calibrated and checked on this machine in one run.

This machine has 2 cores, so the tier's scaling is planned with a model (`_tier_model.py` states
its equations): M writer databases, K compaction workers, the write amplification that the
picker's rules give at the L0 stop trigger, and a per-byte compaction cost measured here.

1. **Calibration.** Tables shaped like the validation's (16-byte keys, 100-byte values that never
   expire) give the table bytes per entry and two compactions shaped like the model's: an L0
   compaction (`l0_stop_trigger` flushes and the model's L1) and a level compaction (one table
   of `target_file_size` and two below it). Each runs `run_compaction` on a
   `streamlet compaction-service` with one local worker process, as copies under fresh ids, 8
   in flight, so the worker never waits: wall seconds per input byte (the input tables' sizes,
   as the model counts them), per-task overheads included. `ns_per_input_byte` weighs the two
   by their share of the model's work. It is measured three times, before each validation run
   and after the last, and the least is used: other work on the machine only ever slows a
   calibration down (the validation charges the other work it sees separately, below).
2. **Validation** at K = 1 and K = 2: a compaction service process with K workers (policy
   `least_loaded`, no subcompactions) and M `LsmDB`s in this process, one writer thread each,
   writing as fast as they can (every key of the database once, then uniform updates) with
   small memtables and levels (`OPTIONS`) and `max_compactions = 1`, as the model assumes,
   through one `RemoteCompactor`. After the first pass and a settling time, a window measures
   the write rate: user bytes written / seconds. Writers that write as fast as they can are held
   by their stop stalls at the rate their compactions sustain, so this is the sustained rate
   without stalls; the stall counters (`statebackend/lsm/debt.py`) give the share of the
   window the writers were stopped (`stop_stall_share_k*`: the brake, not a fault). Also
   measured, to compare with the model: the compaction input bytes per user byte and the level
   sizes. A compaction that falls back to local fails the run (it would add capacity).
   `model_error` = max over K of |predicted - measured| / measured (target <= 0.25).
3. **The plan**: the K that M = 1 .. 1,000 writers need at 1, 2 and 4 MiB/s each, for databases
   holding 1 GiB with the default `LsmOptions` (but `max_compactions = 1`), on workers with a
   core each, plotted to `compactor_tier.png` in the working directory (log axes; its path is
   `plot` in the result), with the figures at M = 10, 100 and 1,000.

Sharing 2 cores. The writers (one process: at most one core, the GIL), the service's own process
and the K workers share the 2 cores with whatever else the machine runs. Over the window the
run measures, from /proc, the CPU of the writers' process plus the service's main process per
user byte written (`writer_cpu_ns_per_byte_k*`, the model's `w`), of the workers
(`worker_cpu_cores_k*`) and of everything else (`other_cpu_cores_k*`: the machine's busy time
less ours). The prediction then gives the workers only what is left:
`R = min(min(K, M) / tau, P / (tau + w), 1 / w)` with `P` = the cores less the other work. At
K = 1 the worker usually has a core of its own and the first term decides; at K = 2 the writers
take their share of the two cores and the second does.
"""

import os
import posixpath
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import _tier_model as model
from compaction_service.client import RemoteCompactor
from compaction_service.subcompactions import input_bytes
from statebackend.dfs import filesystem
from statebackend.lsm.compaction_job import (
    SPEC_VERSION,
    CompactionInput,
    CompactionResult,
    CompactionSpec,
)
from statebackend.lsm.db import LsmDB
from statebackend.lsm.meta import TableMeta
from statebackend.lsm.options import LsmOptions
from statebackend.lsm.table import write_table

KEY_BYTES = 16
VALUE_BYTES = 100  # a first byte of 0: a TTL envelope that never expires
ENTRY_BYTES = KEY_BYTES + VALUE_BYTES
# Small memtables and levels, so that a few seconds reach the steady state of three levels:
# L1 and L2 above the bottom level L3, which holds every key (num_levels = 4). One compaction at
# a time per database, as the model assumes (see its docstring).
OPTIONS = LsmOptions(
    memtable_bytes=256 << 10,
    max_compactions=1,
    level_base_bytes=256 << 10,
    level_multiplier=4,
    num_levels=4,
    target_file_size=256 << 10,
    gc_grace_s=2.0,  # the run rewrites gigabytes: delete them as it goes
    gc_interval_s=2.0,
)
KEYS = (16 << 20) // ENTRY_BYTES  # per database: 16 MiB of user data
# The plan: the default options, but one compaction at a time (the model's assumption), and
# 1 GiB of user data per database.
PLAN_OPTIONS = LsmOptions(max_compactions=1)
PLAN_KEYS = (1 << 30) // ENTRY_BYTES
PLAN_RATES_MIB = (1, 2, 4)  # user MiB/s per writer
PLAN_WRITERS = (10, 100, 1000)
TARGET_ERROR = 0.25
CALIBRATION_IN_FLIGHT = 8  # calibration compactions queued or running at once


@dataclass(frozen=True)
class Sizes:
    writers: int
    settle_s: float
    window_s: float
    calibration_bytes: int  # input bytes of each kind of calibration compaction


QUICK = Sizes(writers=4, settle_s=8.0, window_s=20.0, calibration_bytes=48 << 20)
FULL = Sizes(writers=8, settle_s=20.0, window_s=60.0, calibration_bytes=160 << 20)


def run(quick: bool = False) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="bench-compactor-tier-"))
    values = _values(random.Random(7))
    costs, runs = [], {}
    try:
        calibration = _calibration(workdir, values)
        for k in (1, 2):
            costs.append(_costs(calibration, sizes.calibration_bytes))
            runs[k] = _validate(workdir, k, sizes, values)
        costs.append(_costs(calibration, sizes.calibration_bytes))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    shape = model.LsmShape.of(OPTIONS, KEYS, ENTRY_BYTES, calibration.table_bytes_per_entry)
    amp = model.amplification(shape)
    l0_share = amp.by_output_level[1] / amp.total
    # Other work on the machine only ever slows a calibration down: take the least.
    measured_c = [l0_share * cost["l0"] + (1 - l0_share) * cost["level"] for cost in costs]
    c = min(measured_c)
    result: dict[str, Any] = {
        "writers": sizes.writers,
        "window_s": sizes.window_s,
        "cpus": os.cpu_count() or 0,
        "load_average_1m_before": load_before,
        "table_bytes_per_user_byte": shape.table_bytes_per_user_byte,
        "write_amplification": amp.total,
        "model_compaction_bytes_per_user_byte": shape.table_bytes_per_user_byte * amp.total,
        "model_levels_mib": [round(size / (1 << 20), 2) for size in amp.levels],
        "ns_per_input_byte": c * 1e9,
        "ns_per_input_byte_calibrations": [round(x * 1e9, 2) for x in measured_c],
        "ns_per_input_byte_l0": min(cost["l0"] for cost in costs) * 1e9,
        "ns_per_input_byte_level": min(cost["level"] for cost in costs) * 1e9,
    }
    errors = []
    for k, measured in runs.items():
        budget = model.Costs(c, measured["writer_cpu_per_byte"], measured["cores"], 1.0)
        predicted = model.sustained_rate(shape, budget, sizes.writers, k)
        errors.append(abs(predicted - measured["rate"]) / measured["rate"])
        result |= {
            f"predicted_rate_mib_k{k}": predicted / (1 << 20),
            f"measured_rate_mib_k{k}": measured["rate"] / (1 << 20),
            f"measured_compaction_bytes_per_user_byte_k{k}": measured["amplification"],
            f"measured_levels_mib_k{k}": measured["levels_mib"],
            f"writer_cpu_ns_per_byte_k{k}": measured["writer_cpu_per_byte"] * 1e9,
            f"worker_cpu_cores_k{k}": measured["worker_cores"],
            f"other_cpu_cores_k{k}": measured["other_cores"],
            f"stop_stall_share_k{k}": measured["stop_share"],
        }
    result["model_error"] = max(errors)
    result["model_error_ok"] = max(errors) <= TARGET_ERROR
    result |= _plan(c, calibration.table_bytes_per_entry)
    return result


# -- calibration ---------------------------------------------------------------------------------


def _values(rng: random.Random) -> list[bytes]:
    """Distinct incompressible values (a pool: drawing them costs the writers nothing)."""
    return [b"\x00" + rng.randbytes(VALUE_BYTES - 1) for _ in range(4096)]


@dataclass(frozen=True)
class Calibration:
    """Tables and compactions shaped like the model's, on the DFS below `root`."""

    root: Path
    table_bytes_per_entry: float
    specs: dict[str, CompactionSpec]  # "l0": an L0 compaction; "level": a level compaction


def _calibration(workdir: Path, values: list[bytes]) -> Calibration:
    """Writes the tables: `l0_stop_trigger` flushes and L1 (the model's mean L1 when L0 is
    compacted) for "l0"; one table of `target_file_size` and two below it for "level"."""
    root = workdir / "calibration"
    fs, path = filesystem(f"{root.as_uri()}/tables", {})
    fs.makedirs(path, exist_ok=True)
    rng = random.Random(11)
    keys = [rng.randbytes(KEY_BYTES) for _ in range(KEYS)]

    def table(entries: int) -> TableMeta:
        name = f"t{uuid.uuid4().hex[:12]}.sst"
        rows = sorted(rng.sample(keys, entries))
        data = [(key, values[i % len(values)]) for i, key in enumerate(rows)]
        return write_table(fs, posixpath.join(path, name), name, data, OPTIONS.table, "bench")

    flush_entries = round(OPTIONS.memtable_bytes / (ENTRY_BYTES + 32))
    flushes = [table(flush_entries) for _ in range(OPTIONS.l0_stop_trigger)]
    per_entry = sum(t.size for t in flushes) / sum(t.entries for t in flushes)
    l1 = model.amplification(model.LsmShape.of(OPTIONS, KEYS, ENTRY_BYTES, per_entry)).levels[0]
    level1 = table(round(l1 / per_entry))
    upper = table(round(OPTIONS.target_file_size / per_entry))
    lower = table(2 * upper.entries)
    url = root.as_uri()
    specs = {
        "l0": _spec(url, [(0, (t,)) for t in reversed(flushes)] + [(1, (level1,))], 1),
        "level": _spec(url, [(1, (upper,)), (2, (lower,))], 2),
    }
    return Calibration(root, per_entry, specs)


def _spec(
    root: str, inputs: list[tuple[int, tuple[TableMeta, ...]]], output_level: int
) -> CompactionSpec:
    return CompactionSpec(
        version=SPEC_VERSION,
        compaction_id=uuid.uuid4().hex[:16],
        db_root=root,
        inputs=tuple(CompactionInput(level, tables) for level, tables in inputs),
        output_level=output_level,
        target_file_size=OPTIONS.target_file_size,
        bottommost=False,
        ttl_cutoff_ms=None,
        output_prefix=f"c{uuid.uuid4().hex[:8]}-",
        table_options=OPTIONS.table,
    )


def _costs(calibration: Calibration, nbytes: int) -> dict[str, float]:
    """Wall seconds per input byte of each kind of compaction on a one-worker service whose
    queue never runs dry: the worker's time per byte, its per-task overheads included."""
    service, endpoint = _start_service(calibration.root, workers=1)
    client = RemoteCompactor([endpoint], allow_subcompactions=False, deadline_s=600)
    try:
        costs = {
            name: _seconds_per_byte(client, spec, calibration.root, nbytes)
            for name, spec in calibration.specs.items()
        }
        if client.stats.fallbacks:
            raise RuntimeError(f"{client.stats.fallbacks} calibration compactions ran locally")
        return costs
    finally:
        client.close()
        _kill_group(service)


def _seconds_per_byte(
    client: RemoteCompactor, spec: CompactionSpec, root: Path, nbytes: int
) -> float:
    """Copies of `spec` (fresh ids) worth `nbytes` of input, at most CALIBRATION_IN_FLIGHT at a
    time, after one to warm up: elapsed seconds per input byte (the input tables' sizes, as the
    model counts them)."""
    fs, path = filesystem(f"{root.as_uri()}/tables", {})
    copies = max(4, round(nbytes / input_bytes(spec)))
    _delete_outputs(client.submit(_fresh(spec), {}).result(), fs, path)  # a warm-up
    started = time.perf_counter()
    runs: deque[Future[CompactionResult]] = deque()
    for _ in range(copies):
        if len(runs) == CALIBRATION_IN_FLIGHT:
            _delete_outputs(runs.popleft().result(), fs, path)
        runs.append(client.submit(_fresh(spec), {}))
    while runs:
        _delete_outputs(runs.popleft().result(), fs, path)
    return (time.perf_counter() - started) / (copies * input_bytes(spec))


def _fresh(spec: CompactionSpec) -> CompactionSpec:
    """The same compaction under a new id and output prefix (the service runs each id once)."""
    token = uuid.uuid4().hex
    return replace(spec, compaction_id=token[:16], output_prefix=f"c{token[16:24]}-")


def _delete_outputs(result: CompactionResult, fs: Any, path: str) -> None:
    for table in result.outputs:
        fs.rm_file(posixpath.join(path, table.name))


# -- validation ----------------------------------------------------------------------------------

BATCH = 2048  # puts between updates of a writer's byte count
WAIT_TIMEOUT_S = 600.0  # bounds the waits for the writers (their first pass, their end)


class _Writer(threading.Thread):
    """Writes every key of its database once (shuffled), then uniform updates, until stopped."""

    def __init__(self, db: LsmDB, seed: int, values: list[bytes], stop: threading.Event) -> None:
        super().__init__(name=f"writer-{seed}", daemon=True)
        self.db = db
        self.rng = random.Random(seed)
        self.keys = [self.rng.randbytes(KEY_BYTES) for _ in range(KEYS)]
        self.values = values
        self.stop = stop
        self.written = 0  # user bytes; read by the main thread
        self.filled = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            order = self.keys[:]
            self.rng.shuffle(order)
            for start in range(0, len(order), BATCH):
                self._put(order[start : start + BATCH])
            self.filled.set()
            while not self.stop.is_set():
                self._put(self.rng.choices(self.keys, k=BATCH))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            self.error = e
            self.filled.set()

    def _put(self, keys: list[bytes]) -> None:
        put, values, mask = self.db.put, self.values, len(self.values) - 1
        for i, key in enumerate(keys):
            put(key, values[(self.written + i) & mask])
        self.written += len(keys) * ENTRY_BYTES


class _Counting:
    """The compactor of the databases: the remote client, counting the input bytes (the input
    tables' sizes, as the model counts them) of the compactions they submit."""

    def __init__(self, client: RemoteCompactor) -> None:
        self.client = client
        self.input_bytes = 0
        self._lock = threading.Lock()

    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        with self._lock:
            self.input_bytes += input_bytes(spec)
        return self.client.submit(spec, storage_options)

    def close(self) -> None:
        self.client.close()


def _validate(workdir: Path, workers: int, sizes: Sizes, values: list[bytes]) -> dict[str, Any]:
    """One run at K = `workers`: the window's write rate and what it cost (see the docstring)."""
    root = workdir / f"k{workers}"
    root.mkdir()
    service, endpoint = _start_service(root, workers)
    client = RemoteCompactor([endpoint], allow_subcompactions=False, deadline_s=600)
    compactor = _Counting(client)
    stop = threading.Event()
    dbs: list[LsmDB] = []
    try:
        for i in range(sizes.writers):
            dbs.append(LsmDB(f"file://{root}/db{i}", OPTIONS, compactor=compactor))
        writers = [_Writer(db, seed, values, stop) for seed, db in enumerate(dbs)]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        for writer in writers:
            if not writer.filled.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"the writers did not write their keys in {WAIT_TIMEOUT_S} s")
        _raise_failures(writers)
        time.sleep(sizes.settle_s)
        before = _sample(writers, dbs, compactor, service.pid)
        time.sleep(sizes.window_s)
        after = _sample(writers, dbs, compactor, service.pid)
        stop.set()
        for writer in writers:
            writer.join(WAIT_TIMEOUT_S)
        _raise_failures(writers)
        if client.stats.fallbacks:  # a local compaction would add capacity the run does not have
            raise RuntimeError(f"{client.stats.fallbacks} compactions ran locally, not on the tier")
        levels = [
            round(statistics.mean(db.version.level_bytes(n) for db in dbs) / (1 << 20), 2)
            for n in range(1, OPTIONS.num_levels)
        ]
    finally:
        stop.set()
        for db in dbs:
            db.close()
        client.close()
        _kill_group(service)
    span = {key: after[key] - before[key] for key in before}
    seconds, written = span["time"], span["written"]
    ours = span["self_cpu"] + span["service_cpu"] + span["workers_cpu"]
    other = max(0.0, (span["machine_cpu"] - ours) / seconds)
    return {
        "rate": written / seconds,
        "amplification": span["compaction_input"] / written,
        "writer_cpu_per_byte": (span["self_cpu"] + span["service_cpu"]) / written,
        "worker_cores": span["workers_cpu"] / seconds,
        "other_cores": other,
        "cores": len(os.sched_getaffinity(0)) - other,
        "stop_share": span["stop_seconds"] / (seconds * len(dbs)),
        "levels_mib": levels,
    }


def _raise_failures(writers: list[_Writer]) -> None:
    for writer in writers:
        if writer.error is not None:
            raise RuntimeError(f"{writer.name} failed") from writer.error


def _sample(
    writers: list[_Writer], dbs: list[LsmDB], compactor: _Counting, service: int
) -> dict[str, float]:
    stalls = [db.stalls.totals() for db in dbs]
    stops = sum(seconds for t in stalls for (kind, _), (_, seconds) in t.items() if kind == "stop")
    return {
        "time": time.monotonic(),
        "written": sum(w.written for w in writers),
        "self_cpu": time.process_time(),
        "service_cpu": _process_cpu(service),
        "workers_cpu": sum(_process_cpu(pid) for pid in _descendants(service)),
        "machine_cpu": _machine_cpu(),
        "stop_seconds": stops,
        "compaction_input": compactor.input_bytes,
    }


def _process_cpu(pid: int) -> float:
    """CPU seconds of a process (all its threads, not its children), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        children += [int(child) for child in text.split()]
    return children + [d for child in children for d in _descendants(child)]


def _machine_cpu() -> float:
    """CPU seconds all cores spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _start_service(root: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """A `streamlet compaction-service` process serving `root`; returns it and its address."""
    log_path = root / "service.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "streamlet.cli", "compaction-service", "--port", "0",
             "--allowed-root", root.as_uri(), "--workers", str(workers),
             "--policy", "least_loaded"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and service.poll() is None:
        match = re.search(r"listening on (\S+:\d+)", log_path.read_text())
        if match:
            return service, match.group(1)
        time.sleep(0.1)
    _kill_group(service)
    raise RuntimeError("the compaction service did not start:\n" + log_path.read_text())


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the service and its workers (its session), and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


# -- the plan ------------------------------------------------------------------------------------


def _plan(seconds_per_input_byte: float, table_bytes_per_entry: float) -> dict[str, Any]:
    """K needed for 1 .. 1,000 writers with the default options; plots it, returns figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = model.LsmShape.of(PLAN_OPTIONS, PLAN_KEYS, ENTRY_BYTES, table_bytes_per_entry)
    counts = sorted({round(10 ** (i / 20)) for i in range(61)})  # 1 .. 1000, log-spaced
    figures: dict[str, Any] = {
        "plan_write_amplification": model.amplification(shape).total,
        # One worker sustains this much writing; one writer can write at most as much.
        "plan_rate_per_worker_mib": model.max_writer_rate(shape, seconds_per_input_byte)
        / (1 << 20),
    }
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for rate in PLAN_RATES_MIB:
        needed = [
            model.workers_needed(shape, seconds_per_input_byte, m, rate << 20) for m in counts
        ]
        axes.step(counts, needed, where="post", label=f"{rate} MiB/s per writer")
        for m in PLAN_WRITERS:
            figures[f"k_needed_m{m}_{rate}mib"] = needed[counts.index(m)]
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("writer databases M")
    axes.set_ylabel("compaction workers K (one core each)")
    axes.set_title(
        "Workers needed without write stalls: default LsmOptions (max_compactions = 1), "
        f"1 GiB per database,\n{seconds_per_input_byte * 1e9:.1f} ns per compaction input byte "
        f"(measured), write amplification {figures['plan_write_amplification']:.2f}",
        fontsize=9,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    path = Path.cwd() / "compactor_tier.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    figures["plot"] = str(path)
    return figures
