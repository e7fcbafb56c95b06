"""Compaction offload: the same stateful job with its LSM compactions local and remote.

A write-heavy keyed job (random keys, ~100-byte values in ValueState, small memtables, so the
LSM flushes and compacts all the time) runs twice in a child process pinned to one core
(`os.sched_setaffinity`), once compacting locally (a worker process, which inherits the core)
and once through a compaction service pinned to the other core. Figures:

- `throughput_ratio` = remote records/s / local records/s (target >= 1.4): what moving the
  compaction CPU off the job's core buys;
- `job_compaction_cpu_share` = the share of the job's CPU (its process and its children) spent
  compacting, in the remote run (target <= 0.02); `job_compaction_cpu_share_local` for contrast;
- `service_cpu_seconds`: what the service spent for the remote run.

The child configures the job like any user would (`compaction.mode`, `compaction.service.address`,
the `lsm.*` keys) and reads the compaction figures from the job's metrics.
"""

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEYS = 200_000
VALUE_BYTES = 100
# Small memtables and tables, one compaction at a time, one local compaction worker process.
LSM_OPTIONS = {
    "lsm.memtable_bytes": 512 << 10,
    "lsm.target_file_size": 1 << 20,
    "lsm.max_compactions": 1,
    "lsm.compaction_workers": 1,
}


def run(quick: bool = False) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise RuntimeError(f"the offload benchmark needs 2 cores, this process may use {cores}")
    job_core, service_core = cores[0], cores[1]
    records, timeout_s = (120_000, 120.0) if quick else (300_000, 1200.0)
    workdir = Path(tempfile.mkdtemp(prefix="streamlet-offload-"))
    try:
        service, endpoint = _start_service(workdir, service_core)
        try:
            local = _run_child("local", "", records, workdir / "local", job_core, timeout_s)
            remote = _run_child(
                "remote", endpoint, records, workdir / "remote", job_core, timeout_s
            )
        finally:
            _kill_group(service)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "records": records,
        "job_core": job_core,
        "service_core": service_core,
        "local_records_per_s": round(local["records_per_s"]),
        "remote_records_per_s": round(remote["records_per_s"]),
        "throughput_ratio": remote["records_per_s"] / local["records_per_s"],
        "job_compaction_cpu_share": remote["compaction_cpu_share"],
        "job_compaction_cpu_share_local": local["compaction_cpu_share"],
        "compactions_local_run": local["compactions"],
        "compactions_remote_run": remote["compactions"],
        "remote_fallbacks": remote["fallbacks"],
        "service_cpu_seconds": remote["service_cpu_seconds"],
    }


def _pin(core: int) -> Any:
    return lambda: os.sched_setaffinity(0, {core})


def _start_service(workdir: Path, core: int) -> tuple[subprocess.Popen[str], str]:
    with (workdir / "service.log").open("w") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "streamlet.cli", "compaction-service", "--port", "0",
             "--allowed-root", workdir.as_uri(), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, text=True, preexec_fn=_pin(core),
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"listening on (\S+:\d+)", (workdir / "service.log").read_text())
        if match:
            return service, match.group(1)
        if service.poll() is not None:
            break
        time.sleep(0.1)
    _kill_group(service)
    raise RuntimeError(
        "the compaction service did not start:\n" + (workdir / "service.log").read_text()
    )


def _run_child(
    mode: str, endpoint: str, records: int, root: Path, core: int, timeout_s: float
) -> dict[str, Any]:
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.offload", mode, endpoint, str(records), str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pin(core),
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the {mode} run did not finish within {timeout_s:.0f} s") from None
    finally:
        _kill_group(child)
    if child.returncode != 0:
        raise RuntimeError(f"the {mode} run failed:\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the process and what it started (its session), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# -- the child: one run of the job -------------------------------------------------------------


def _child(mode: str, endpoint: str, records: int, root: Path) -> dict[str, Any]:
    import asyncio
    import random

    from statebackend import ValueStateDescriptor
    from streamlet import Job, KeyedProcessFunction
    from streamlet.connectors import BlackholeSink, DataGeneratorSource
    from streamlet.executor import execute_job
    from streamlet.metrics import JobMetrics

    class Latest(KeyedProcessFunction):
        VALUE = ValueStateDescriptor("value")

        def process_element(self, value: Any, ctx: Any) -> Any:
            ctx.state(self.VALUE).update(value[1])
            return ()

    def record(index: int, rng: random.Random) -> tuple[int, bytes]:
        return rng.randrange(KEYS), rng.randbytes(VALUE_BYTES)

    job = Job(f"offload-{mode}")
    (
        job.source(DataGeneratorSource(record, count=records, seed=5), name="writes")
        .key_by(lambda pair: pair[0])
        .process(Latest(), name="latest")
        .sink(BlackholeSink(), name="discard")
    )
    config = {
        "state.backend": "lsm",
        "state.dir": (root / "state").as_uri(),
        "state.local-dir": str(root / "local"),
        **LSM_OPTIONS,
        "checkpoint.dir": (root / "checkpoints").as_uri(),
        "checkpoint.interval": 0,
        "compaction.mode": mode,
        "compaction.service.address": endpoint if mode == "remote" else "",
    }
    metrics = JobMetrics()
    result = asyncio.run(execute_job(job, config, metrics=metrics))
    usage_self = resource.getrusage(resource.RUSAGE_SELF)
    usage_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total_cpu = sum((u.ru_utime + u.ru_stime) for u in (usage_self, usage_children))
    local, remote = metrics.compactions()
    local_cpu, remote_cpu = metrics.compaction_cpu_seconds()
    return {
        "records_per_s": records / result.seconds,
        "compaction_cpu_share": local_cpu / total_cpu,
        "compactions": remote if mode == "remote" else local,
        "fallbacks": local if mode == "remote" else 0,
        "service_cpu_seconds": remote_cpu,
    }


if __name__ == "__main__":
    mode_arg, endpoint_arg, records_arg, root_arg = sys.argv[1:5]
    print(json.dumps(_child(mode_arg, endpoint_arg, int(records_arg), Path(root_arg))))
