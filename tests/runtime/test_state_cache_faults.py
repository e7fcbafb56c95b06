"""The state cache across a crash (`statebackend.cache`): a process SIGKILLed between checkpoints,
holding dirty entries in its cache (or, with a cache so small that values are evicted all the time,
having written them back to the store after the checkpoint), restores its latest checkpoint
exactly: nothing held or written back after that checkpoint leaks into the restored state.

Two levels: a process using a keyed state backend directly (so the test sees that entries were
dirty, or written back, when the process was killed), and `streamlet run` of the keyed count job
(exactly-once state and sink output across the kill)."""

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from tests.runtime.test_faults import LSM, kill_mid_stream_and_rerun
from tests.support.processes import ProcessRunner

# A few entries' worth (statebackend.cache): most of the 50 words' counts are evicted and written
# back between two checkpoints.
TINY_CACHE = "2000"
DEFAULT_CACHE = str(64 << 20)
LSM_OPTIONS = json.loads(LSM["state.options"])
BEFORE, AFTER = 3_000, 6_000  # words counted before the checkpoint, and in all

# Counts words through the cache, takes a checkpoint, counts more, reports what the cache holds
# dirty and how many stored counts were written back after the checkpoint, then waits to be killed.
CHILD = """
import json, sys, time
from statebackend import BackendConfig, ValueStateDescriptor, create_backend
name, root, cache_bytes, options = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
config = BackendConfig(name, checkpoint_dir=f"file://{root}/chk", local_dir=f"{root}/local",
                       options=json.loads(options), cache_bytes=cache_bytes)
backend = create_backend(config, scope="op/0")
count = backend.get_state(ValueStateDescriptor("count", default=0))
def count_words(start, stop):
    for i in range(start, stop):
        backend.set_current_key(f"w{i * 7 % 50}")
        count.update(count.value() + 1)
count_words(0, int(sys.argv[5]))
print("checkpoint", json.dumps(backend.snapshot(1).to_dict()))
checkpointed = {}
for i in range(50):
    backend.set_current_key(f"w{i}")
    checkpointed[i] = backend.kv_store.get(backend.key_prefix("count"))
count_words(int(sys.argv[5]), int(sys.argv[6]))
dirty = sum(entry.dirty for entry in count._entries.values())
written = 0
for i in range(50):
    backend.set_current_key(f"w{i}")
    written += backend.kv_store.get(backend.key_prefix("count")) != checkpointed[i]
print(f"holding dirty {dirty} written back {written}")
time.sleep(600)
"""


def counts(stop: int) -> Counter:
    return Counter(f"w{i * 7 % 50}" for i in range(stop))


@pytest.mark.parametrize("cache_bytes", [DEFAULT_CACHE, TINY_CACHE], ids=["default", "tiny"])
@pytest.mark.parametrize("name", ["memory", "rocksdb", "lsm"])
def test_sigkill_between_checkpoints_restores_the_checkpoint_exactly(
    process_runner: ProcessRunner, tmp_path: Path, name: str, cache_bytes: str
) -> None:
    options = LSM_OPTIONS if name == "lsm" else {}
    child = process_runner.python(
        CHILD,
        args=[name, str(tmp_path), cache_bytes, json.dumps(options), str(BEFORE), str(AFTER)],
        name=f"cache-{name}",
    )
    line = child.wait_for_output("holding dirty", timeout=120)
    dirty, written = (int(word) for word in line.split()[2::3])
    if cache_bytes == DEFAULT_CACHE:  # every count changed since the checkpoint is held dirty
        assert (dirty, written) == (50, 0)
    else:  # most were evicted, so written to the store after the checkpoint
        assert written > 40 and dirty <= 10
    assert child.kill() == -signal.SIGKILL

    handle = json.loads(child.output().split("checkpoint ", 1)[1].splitlines()[0])
    config = BackendConfig(
        name,
        checkpoint_dir=f"file://{tmp_path}/chk",
        local_dir=f"{tmp_path}/restored",
        options=options,
        cache_bytes=int(cache_bytes),
    )
    restored = create_backend(config, scope="op/0", restore=handle)
    try:
        count = restored.get_state(ValueStateDescriptor("count", default=0))
        got = {}
        for word in sorted(restored.keys("count")):
            restored.set_current_key(word)
            got[word] = count.value()
        assert got == dict(counts(BEFORE))
    finally:
        restored.dispose()


@pytest.mark.parametrize(
    "backend",
    [{"state.backend": "memory"}, {"state.backend": "rocksdb"}, LSM],
    ids=["memory", "rocksdb", "lsm"],
)
def test_sigkill_with_a_tiny_state_cache_restores_the_last_checkpoint_exactly(
    process_runner: ProcessRunner, tmp_path: Path, backend: dict[str, str]
) -> None:
    defines = {
        **backend,
        "state.cache-bytes": TINY_CACHE,
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }
    kill_mid_stream_and_rerun(process_runner, tmp_path / "out", defines)
