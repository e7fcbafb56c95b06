"""Restore and rescale time against state size: lsm (nothing downloaded) against rocksdb.

The state of a keyed operator at parallelism 2: `keys` keys of 100 random (incompressible) bytes in
ValueState, written through the keyed state backends of its two subtasks (each owning its
key-group range, as in a job), checkpointed to S3 (a moto server started for the run, from the
test support), at two state sizes. Then, for each backend, with the writers gone:

- `restore_s_<backend>_<mb>`: a restore at the same parallelism: from the start of the restore
  until every new subtask has served a read (the subtasks restore in parallel threads, as the
  subtasks of a task manager do);
- `rescale_s_<backend>_<mb>`: the same for a restore from 2 to 3 subtasks;
- at the largest size, `restore_speedup_vs_rocksdb` and `rescale_speedup_vs_rocksdb` (rocksdb's
  time over lsm's), and `restore_growth_lsm` / `rescale_growth_lsm` (large over small);
- `post_rescale_throughput_ratio`: lsm events per second (read a key's value, write a new one;
  keys drawn with weights 1/rank) over the first `post_events` events after the 2 -> 3 rescale,
  with cold caches, over the same workload on the writers before their checkpoint, once they
  are warmed up by as many events (the steady state of the job being rescaled).

rocksdb restores by downloading the snapshot's files (and, to rescale, every overlapping
snapshot, keeping the entries in range); lsm reads the pinned manifests and opens the tables in
place, so its times should not grow with the state.
"""

import random
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path

from statebackend import (
    BackendConfig,
    KeyedStateBackend,
    KeyGroupRange,
    StateHandle,
    ValueStateDescriptor,
    create_backend,
)
from statebackend.keygroups import key_group_of, subtask_of_key_group
from statebackend.serializers import DEFAULT_SERIALIZER
from tests.support.s3_server import S3Server

MAX_PARALLELISM = 128
VALUE = ValueStateDescriptor("value")
VALUE_BYTES = 100
# Equal write buffers and caches (the lsm defaults), as in the job benchmark.
OPTIONS = {
    "rocksdb": {"write_buffer_bytes": 8 << 20, "block_cache_bytes": 64 << 20},
    "lsm": {"lsm.memtable_bytes": 8 << 20, "lsm.block_cache_bytes": 64 << 20},
}


def _subtask(key: int, parallelism: int) -> int:
    key_group = key_group_of(DEFAULT_SERIALIZER.serialize(key), MAX_PARALLELISM)
    return subtask_of_key_group(MAX_PARALLELISM, parallelism, key_group)


def _open(
    config: BackendConfig, parallelism: int, index: int, restore: list[StateHandle] | None
) -> KeyedStateBackend:
    return create_backend(
        config,
        scope=f"bench/rescale/{index}",
        key_group_range=KeyGroupRange.of_subtask(MAX_PARALLELISM, parallelism, index),
        max_parallelism=MAX_PARALLELISM,
        restore=restore,
    )


def _events(backends: list[KeyedStateBackend], keys: int, events: int, seed: int) -> float:
    """Events per second of read-then-write of keys drawn with weights 1/rank (Zipf, as words
    in a text: a job's keys are seldom uniform)."""
    rng = random.Random(seed)
    states = [b.get_state(VALUE) for b in backends]
    weights = list(accumulate(1 / rank for rank in range(1, keys + 1)))
    picks = rng.choices(range(keys), cum_weights=weights, k=events)
    owners = [_subtask(key, len(backends)) for key in picks]
    started = time.perf_counter()
    for key, owner in zip(picks, owners, strict=True):
        backends[owner].set_current_key(key)
        state = states[owner]
        state.value()
        state.update(rng.randbytes(VALUE_BYTES))
    return events / (time.perf_counter() - started)


def _write_state(
    config: BackendConfig, keys: int, post_events: int | None
) -> tuple[list[StateHandle], float | None]:
    """The two subtasks' checkpoint handles, and their steady events/s when asked."""
    writers = [_open(config, 2, i, None) for i in range(2)]
    try:
        states = [w.get_state(VALUE) for w in writers]
        rng = random.Random(7)
        order = list(range(keys))
        rng.shuffle(order)
        for key in order:
            owner = _subtask(key, 2)
            writers[owner].set_current_key(key)
            states[owner].update(rng.randbytes(VALUE_BYTES))
        steady = None
        if post_events is not None:  # warmed up by as many events first
            _events(writers, keys, post_events, seed=11)
            steady = _events(writers, keys, post_events, seed=12)
        return [w.snapshot(1) for w in writers], steady
    finally:
        for w in writers:
            w.dispose()


def _timed_restore(
    config: BackendConfig, handles: list[StateHandle], parallelism: int, keys: int
) -> tuple[float, list[KeyedStateBackend]]:
    """Seconds until every one of `parallelism` subtasks restored and served a read."""
    probes = {}
    for key in range(keys):
        probes.setdefault(_subtask(key, parallelism), key)
        if len(probes) == parallelism:
            break

    def restore(index: int) -> KeyedStateBackend:
        # As the runtime does: the snapshots whose key groups overlap the subtask's.
        key_groups = KeyGroupRange.of_subtask(MAX_PARALLELISM, parallelism, index)
        overlapping = [h for h in handles if len(h.key_group_range.intersection(key_groups))]
        backend = _open(config, parallelism, index, overlapping)
        backend.set_current_key(probes[index])
        if backend.get_state(VALUE).value() is None:
            raise AssertionError(f"subtask {index} lost key {probes[index]}")
        return backend

    started = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        backends = list(pool.map(restore, range(parallelism)))
    return time.perf_counter() - started, backends


def _dispose(backends: list[KeyedStateBackend]) -> None:
    for backend in backends:
        backend.dispose()


def _measure(
    workdir: Path, s3: S3Server, backend: str, keys: int, post_events: int | None
) -> dict[str, float]:
    bucket = s3.create_bucket()
    config = BackendConfig(
        backend,
        checkpoint_dir=f"s3://{bucket}/state",
        local_dir=str(workdir / f"{backend}-{keys}-local"),
        storage_options=s3.storage_options(),
        options=OPTIONS[backend],
    )
    handles, steady = _write_state(config, keys, post_events)
    restore_s, restored = _timed_restore(config, handles, 2, keys)
    _dispose(restored)
    rescale_s, rescaled = _timed_restore(config, handles, 3, keys)
    figures = {"restore_s": restore_s, "rescale_s": rescale_s}
    try:
        if steady is not None and post_events is not None:
            after = _events(rescaled, keys, post_events, seed=13)
            figures["post_rescale_throughput_ratio"] = after / steady
            figures["post_rescale_events_per_s"] = after
            figures["steady_events_per_s"] = steady
    finally:
        _dispose(rescaled)
    return figures


def run(quick: bool = False) -> dict[str, float | int]:
    # Keys per size: about 100 bytes of value per key (the state's bytes, keys and framing aside).
    sizes_mb = (50, 200) if quick else (100, 1000)
    post_events = 50_000 if quick else 200_000
    result: dict[str, float | int] = {"post_events": post_events}
    workdir = Path(tempfile.mkdtemp(prefix="bench-rescale-"))
    try:
        with S3Server(workdir / "s3-log") as s3:
            for backend in ("rocksdb", "lsm"):
                for mb in sizes_mb:
                    keys = mb * (1 << 20) // VALUE_BYTES
                    throughput = backend == "lsm" and mb == sizes_mb[-1]
                    figures = _measure(
                        workdir, s3, backend, keys, post_events if throughput else None
                    )
                    result[f"restore_s_{backend}_{mb}mb"] = figures["restore_s"]
                    result[f"rescale_s_{backend}_{mb}mb"] = figures["rescale_s"]
                    result.update(
                        (name, value)
                        for name, value in figures.items()
                        if name not in ("restore_s", "rescale_s")
                    )
        small, large = sizes_mb
        for kind in ("restore", "rescale"):
            result[f"{kind}_speedup_vs_rocksdb"] = (
                result[f"{kind}_s_rocksdb_{large}mb"] / result[f"{kind}_s_lsm_{large}mb"]
            )
            result[f"{kind}_growth_lsm"] = (
                result[f"{kind}_s_lsm_{large}mb"] / result[f"{kind}_s_lsm_{small}mb"]
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result
