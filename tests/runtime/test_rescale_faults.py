"""Rescaling with real processes: `streamlet run` SIGKILLed mid-stream, then run again at another
parallelism (from the checkpoint's URL with `-s`, or the latest checkpoint with `-p`), SIGKILLed
again and run at yet another parallelism: state and FileSink output stay exactly-once. Windows and
timers rescaled mid-stream give what a run without a rescale gives; a Kafka source rescaled loses
no record and counts none twice. Bad input to `-s` is a one-line error before anything runs."""

import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from streamlet.checkpoint import CheckpointStorage
from tests.runtime.jobs import windowed_count
from tests.runtime.test_faults import JOB, RECORDS, committed_updates, expected_counts
from tests.runtime.test_kafka import KAFKA_JOB, produce
from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ManagedProcess, ProcessRunner

WINDOWED_JOB = Path(windowed_count.__file__)
LSM_OPTIONS = {"lsm.memtable_bytes": 16 << 10, "lsm.l0_compaction_trigger": 2}


def settings(tmp_path: Path, backend: str = "memory") -> dict[str, str]:
    # lsm with small memtables, so that it flushes and compacts while it runs and rescales.
    options = {"state.options": json.dumps(LSM_OPTIONS)} if backend == "lsm" else {}
    return {
        **options,
        "state.backend": backend,
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }


def start(
    runner: ProcessRunner,
    job: Path,
    parallelism: int,
    defines: dict[str, str],
    flags: list[str],
    env: dict[str, str],
) -> ManagedProcess:
    """`streamlet run -v` (checkpoint and restore lines are waited for)."""
    args = ["run", str(job), "-p", str(parallelism), "-v", *flags]
    for key, value in defines.items():
        args += ["-D", f"{key}={value}"]
    return runner.python(module="streamlet.cli", args=args, env=env)


def kill_after_checkpoints(process: ManagedProcess, storage: CheckpointStorage, n: int) -> None:
    """SIGKILL `process` (just started) once it completed `n` checkpoints of its own."""
    ids = storage.checkpoint_ids()
    process.wait_for_output(f"checkpoint {(ids[0] if ids else 0) + n} completed", timeout=60)
    assert process.kill() == -9


def latest(storage: CheckpointStorage) -> int:
    metadata = storage.latest()
    assert metadata is not None
    return metadata["checkpoint_id"]


def assert_exact_counts(output: Path) -> None:
    """Each key's counts 1..n were committed once each (n: its number of records)."""
    expected = expected_counts(RECORDS)
    assert {key: sorted(counts) for key, counts in committed_updates(output).items()} == {
        key: list(range(1, n + 1)) for key, n in expected.items()
    }


@pytest.mark.parametrize("backend", ["memory", "rocksdb", "lsm"])
def test_rescale_2_to_3_to_1_with_sigkill_before_and_after(
    process_runner: ProcessRunner, tmp_path: Path, backend: str
) -> None:
    defines = settings(tmp_path, backend)
    storage = CheckpointStorage(defines["checkpoint.dir"], "keyed-count", {})
    output = tmp_path / "out"
    env = {"KEYED_COUNT_OUTPUT": str(output), "KEYED_COUNT_RECORDS": str(RECORDS)}
    # memory: 2 -> 3 from the checkpoint's directory with -s, 3 -> 1 from the latest checkpoint;
    # rocksdb, lsm: 2 -> 3 from the latest checkpoint, 3 -> 1 from its _metadata with -s.
    first = start(process_runner, JOB, 2, defines, [], {**env, "KEYED_COUNT_HOLD_AT": "3000"})
    kill_after_checkpoints(first, storage, 3)
    restored = latest(storage)
    flags = ["-s", storage.url_of(restored)] if backend == "memory" else []
    # Held at 1000 records per reader: the rescaled run cannot end before it is killed.
    second = start(process_runner, JOB, 3, defines, flags, {**env, "KEYED_COUNT_HOLD_AT": "1000"})
    second.wait_for_output(f"restoring checkpoint {restored} of job keyed-count", timeout=60)
    kill_after_checkpoints(second, storage, 2)
    restored = latest(storage)
    flags = [] if backend == "memory" else ["-s", f"{storage.url_of(restored)}/_metadata"]
    third = start(process_runner, JOB, 1, defines, flags, env)
    assert third.wait(timeout=90) == 0, third.describe("failed")
    summary = rf"^job keyed-count finished in .*, restored from checkpoint {restored}\b"
    assert re.search(summary, third.output(), re.M), third.output()
    assert_exact_counts(output)


def committed_lines(directory: Path) -> list[str]:
    return [line for part in directory.glob("part-*") for line in part.read_text().splitlines()]


def test_windows_and_timers_rescaled_mid_stream_give_the_results_of_a_run_without(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    defines = settings(tmp_path, "rocksdb")
    storage = CheckpointStorage(defines["checkpoint.dir"], "windowed-count", {})
    output = tmp_path / "out"
    env = {"WINDOWED_COUNT_OUTPUT": str(output), "WINDOWED_COUNT_RECORDS": "12000"}
    first = start(
        process_runner, WINDOWED_JOB, 2, defines, [], {**env, "WINDOWED_COUNT_HOLD_AT": "3000"}
    )
    # Killed once windows fired and were committed (held at 6000 records, 60 s of event time,
    # it gets there however slow the machine), and again 2 checkpoints later.
    deadline = time.monotonic() + 60
    while not committed_lines(output / "windows"):
        assert first.running and time.monotonic() < deadline, first.describe("committed nothing")
        time.sleep(0.05)
    kill_after_checkpoints(first, storage, 2)
    second = start(process_runner, WINDOWED_JOB, 3, defines, [], env)
    assert second.wait(timeout=90) == 0, second.describe("failed")
    assert "restored from checkpoint" in second.output()
    # What a run without a rescale gives: every window's count and every timer, once.
    events = [windowed_count.EVENTS.record(i) for i in range(12000)]
    windows = Counter((word, ts // 1000 * 1000 + 1000) for word, ts in events)
    timers = {(word, ts // 1000 * 1000 + 2000) for word, ts in events}
    assert sorted(committed_lines(output / "windows")) == sorted(
        f"window {word} {end} {n}" for (word, end), n in windows.items()
    )
    assert sorted(committed_lines(output / "timers")) == sorted(
        f"timer {word} {ts}" for word, ts in timers
    )


async def test_a_rescaled_kafka_source_reads_every_record_once(
    kafka_broker: KafkaBroker, process_runner: ProcessRunner, tmp_path: Path
) -> None:
    topic = f"words-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=4)
    words = [f"w{(i * 7) % 13}" for i in range(1200)]
    await produce(kafka_broker.bootstrap_servers, topic, words[:600])
    output = tmp_path / "out"
    env = {
        "KAFKA_COUNT_SERVERS": kafka_broker.bootstrap_servers,
        "KAFKA_COUNT_TOPIC": topic,
        "KAFKA_COUNT_OUTPUT": str(output),
    }
    defines = {**settings(tmp_path), "checkpoint.interval": "100ms"}
    storage = CheckpointStorage(defines["checkpoint.dir"], "kafka-count", {})
    first = start(process_runner, KAFKA_JOB, 2, defines, [], env)
    kill_after_checkpoints(first, storage, 3)
    await produce(kafka_broker.bootstrap_servers, topic, words[600:])
    # Partitions 0..3 move from subtasks p % 2 to p % 3, with their offsets.
    second = start(process_runner, KAFKA_JOB, 3, defines, [], {**env, "KAFKA_COUNT_BOUNDED": "1"})
    assert second.wait(timeout=60) == 0, second.describe("failed")
    assert "restored from checkpoint" in second.output()
    assert {key: sorted(counts) for key, counts in committed_updates(output).items()} == {
        key: list(range(1, n + 1)) for key, n in Counter(words).items()
    }


RENAMED_JOB = """
import os
from streamlet import Job
from streamlet.connectors import FileSink
from tests.runtime.jobs.keyed_count import WORDS_SOURCE, Count

job = Job("keyed-count")
(
    job.source(WORDS_SOURCE, name="words")
    .key_by(lambda w: w)
    .process(Count(), name="count")
    .uid("renamed")
    .sink(FileSink(os.environ["KEYED_COUNT_OUTPUT"]), name="files")
)
"""


def test_bad_restore_input_is_a_one_line_error_before_anything_runs(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    defines = settings(tmp_path)
    output = tmp_path / "out"
    env = {"KEYED_COUNT_OUTPUT": str(output), "KEYED_COUNT_RECORDS": "100"}

    def written() -> dict[str, bytes]:
        """The job's files: checkpoints, state and output (not the processes' logs)."""
        roots = ("checkpoints", "state", "local", "out")
        return {
            str(p): p.read_bytes()
            for root in roots
            for p in sorted((tmp_path / root).rglob("*"))
            if p.is_file()
        }

    def refused(job: Path, parallelism: int, flags: list[str], message: str) -> None:
        before = written()
        process = start(process_runner, job, parallelism, defines, flags, env)
        assert process.wait(timeout=60) == 1
        assert process.output().strip().splitlines()[-1].startswith(f"error: {message}")
        assert written() == before

    missing = (tmp_path / "nowhere").as_uri()
    refused(JOB, 2, ["-s", missing], f"no checkpoint or savepoint at {missing}: the path does")
    refused(JOB, 3, ["-D", "parallelism.max=2"], "'words' has parallelism 3, above parallelism.max")
    finished = start(process_runner, JOB, 2, defines, [], env)
    assert finished.wait(timeout=60) == 0, finished.describe("failed")
    storage = CheckpointStorage(defines["checkpoint.dir"], "keyed-count", {})
    url = storage.url_of(latest(storage))
    renamed = tmp_path / "renamed.py"
    renamed.write_text(RENAMED_JOB)
    refused(renamed, 2, ["-s", url], f"checkpoint {latest(storage)} of job 'keyed-count' has state")
    allow = ["-s", url, "--allow-non-restored-state"]
    allowed = start(process_runner, renamed, 2, defines, allow, env)
    assert allowed.wait(timeout=60) == 0, allowed.describe("failed")
    metadata = Path(url.removeprefix("file://")) / "_metadata"
    metadata.write_text(metadata.read_text()[:-10])
    refused(JOB, 2, ["-s", url], f"the metadata of {url} is damaged: it is not JSON")
