"""A keyed word count through the runtime on each backend, and checkpoint time against state size.

- `<backend>_events_per_s`: generated words, keyed, counted in ValueState, into a blackhole sink,
  run in-process by the runtime (`execute_job`, parallelism 1). `lsm_vs_rocksdb` compares the lsm
  backend (block cache on) with rocksdb in the same run; `lsm_nocache_vs_rocksdb` with the lsm
  block cache off.
- `checkpoint_s_<backend>_<keys>`: the time of one checkpoint (`snapshot`) of a backend holding
  `keys` keys of 100 random (incompressible) bytes, at two state sizes, both backends with 8 MiB
  write buffers and their checkpoint directory on S3 (a moto server started for the run, from the
  test support). rocksdb uploads its files, so its time grows with the state; lsm flushes its
  memtable and pins a manifest, so its time should stay flat.
  `checkpoint_growth_<backend>` is the large size's time over the small one's.
"""

import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from streamlet import Job, KeyedProcessFunction
from streamlet.connectors import BlackholeSink, DataGeneratorSource
from streamlet.executor import execute_job
from tests.support.s3_server import S3Server

VALUE = "v" * 100
# Equal write buffers for the checkpoint comparison (the lsm default).
WRITE_BUFFERS = {"rocksdb": {"write_buffer_bytes": 8 << 20}, "lsm": {"lsm.memtable_bytes": 8 << 20}}
RUNS = {
    "memory": {"state.backend": "memory"},
    "rocksdb": {"state.backend": "rocksdb"},
    "lsm": {"state.backend": "lsm"},
    "lsm_nocache": {"state.backend": "lsm", "state.options": {"lsm.block_cache_bytes": 0}},
}


class Count(KeyedProcessFunction):
    COUNT = ValueStateDescriptor("count", default=0)

    def process_element(self, value: str, ctx: Any) -> Any:
        count = ctx.state(self.COUNT)
        count.update(count.value() + 1)
        return ()


def word_count(records: int, keys: int) -> Job:
    job = Job("bench-wordcount")
    source = DataGeneratorSource(lambda i, rng: f"w{rng.randrange(keys)}", count=records, seed=5)
    (
        job.source(source, name="words")
        .key_by(lambda word: word)
        .process(Count(), name="count")
        .sink(BlackholeSink(), name="blackhole")
    )
    return job


def _events_per_second(workdir: Path, settings: dict[str, Any], records: int, keys: int) -> float:
    config = {
        "checkpoint.dir": (workdir / "checkpoints").as_uri(),
        "state.dir": (workdir / "state").as_uri(),
        "state.local-dir": str(workdir / "local"),
        "checkpoint.interval": 0,
        "checkpoint.restore": False,
        **settings,
    }
    result = asyncio.run(execute_job(word_count(records, keys), config, parallelism=1))
    return result.records_in / result.seconds


def _checkpoint_seconds(workdir: Path, s3: S3Server, backend: str, keys: int) -> float:
    bucket = s3.create_bucket()
    config = BackendConfig(
        backend,
        checkpoint_dir=f"s3://{bucket}/state",
        local_dir=str(workdir / f"{backend}-{keys}-local"),
        storage_options=s3.storage_options(),
        options=WRITE_BUFFERS[backend],
    )
    state_backend = create_backend(config, scope="bench/0")
    state = state_backend.get_state(ValueStateDescriptor("v"))
    rng = random.Random(3)
    order = list(range(keys))
    rng.shuffle(order)
    for key in order:
        state_backend.set_current_key(key)
        state.update(rng.randbytes(100))
    started = time.perf_counter()
    state_backend.snapshot(1)
    elapsed = time.perf_counter() - started
    state_backend.dispose()
    return elapsed


def run(quick: bool = False) -> dict[str, float | int]:
    records, keys = (40_000, 10_000) if quick else (400_000, 100_000)
    sizes = (200_000, 800_000) if quick else (500_000, 3_000_000)
    result: dict[str, float | int] = {"records": records, "keys": keys}
    workdir = Path(tempfile.mkdtemp(prefix="bench-job-"))
    try:
        for name, settings in RUNS.items():
            result[f"{name}_events_per_s"] = _events_per_second(
                workdir / name, settings, records, keys
            )
        result["lsm_vs_rocksdb"] = result["lsm_events_per_s"] / result["rocksdb_events_per_s"]
        result["lsm_nocache_vs_rocksdb"] = (
            result["lsm_nocache_events_per_s"] / result["rocksdb_events_per_s"]
        )
        with S3Server(workdir / "s3-log") as s3:
            for backend in ("rocksdb", "lsm"):
                small, large = (_checkpoint_seconds(workdir, s3, backend, n) for n in sizes)
                result[f"checkpoint_s_{backend}_{sizes[0]}"] = small
                result[f"checkpoint_s_{backend}_{sizes[1]}"] = large
                result[f"checkpoint_growth_{backend}"] = large / small
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result
