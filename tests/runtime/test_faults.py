"""Faults with real processes: `streamlet run` SIGKILLed mid-stream and run again restores the
latest checkpoint with exactly-once state (and exactly-once FileSink output); bad job modules and a
poison record give clear errors; the restart strategy retries a failing job."""

import json
import os
import re
import signal
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from streamlet.launcher import load_job
from tests.runtime.jobs import keyed_count
from tests.support.fixtures import S3Bucket
from tests.support.processes import ProcessRunner

JOB = Path(keyed_count.__file__)
RECORDS = 12_000
# A first run holds at half the records (of 2 source subtasks) until it is killed or stopped: it
# cannot end before the checkpoints the test waits for, however slow the machine.
HOLD_AT = str(RECORDS // 4)


def expected_counts(records: int) -> Counter:
    return Counter(keyed_count.WORDS_SOURCE.record(i) for i in range(records))


def committed_updates(output: Path) -> dict[str, list[int]]:
    """Every `key count` line of the committed part files, grouped by key."""
    updates: dict[str, list[int]] = defaultdict(list)
    for part in sorted(output.glob("part-*")):
        for line in part.read_text().splitlines():
            key, count = line.split()
            updates[key].append(int(count))
    return updates


def start_run(runner: ProcessRunner, output: Path, defines: dict[str, str], **env: str):
    """`streamlet run -v` (the checkpoint lines are waited for) of the keyed count job."""
    args = ["run", str(JOB), "-p", "2", "-v"]
    for key, value in defines.items():
        args += ["-D", f"{key}={value}"]
    return runner.python(
        module="streamlet.cli",
        args=args,
        name="streamlet-run",
        env={
            "KEYED_COUNT_OUTPUT": str(output),
            "KEYED_COUNT_RECORDS": str(RECORDS),
            "KEYED_COUNT_RATE": "4000",
            **env,
        },
    )


def kill_mid_stream_and_rerun(
    runner: ProcessRunner, output: Path, defines: dict[str, str], **env: str
) -> None:
    first = start_run(runner, output, defines, KEYED_COUNT_HOLD_AT=HOLD_AT, **env)
    first.wait_for_output("checkpoint 3 completed", timeout=60)
    assert first.kill() == -9
    assert "finished" not in first.output()
    second = start_run(runner, output, defines, **env)
    assert second.wait(timeout=90) == 0, second.describe("failed")
    log = second.output()
    assert re.search(
        r"^job keyed-count finished in .*, restored from checkpoint \d+(; compactions: .*)?$",
        log,
        re.M,
    )
    progress = r"^\[keyed-count\] \d\d:\d\d in [\d,]+ \([\d,]+/s\) out [\d,]+ \([\d,]+/s\) "
    assert re.search(progress + r"checkpoints \d+ compactions local \d+ remote 0$", log, re.M)
    # Exactly-once state: each key's final count is its number of records. Exactly-once sink:
    # every count from 1 to the final one was committed once, none twice, none lost.
    expected = expected_counts(RECORDS)
    updates = committed_updates(output)
    assert {key: max(counts) for key, counts in updates.items()} == dict(expected)
    assert {key: sorted(counts) for key, counts in updates.items()} == {
        key: list(range(1, n + 1)) for key, n in expected.items()
    }


# The lsm backend with small memtables, so that it flushes (and compacts) while it runs.
LSM = {"state.backend": "lsm", "state.options": json.dumps({"lsm.memtable_bytes": 64 << 10})}


def on_file_storage(tmp_path: Path, backend: dict[str, str]) -> dict[str, str]:
    """The defines of a run with `backend`'s state and checkpoints in `tmp_path`."""
    return {
        **backend,
        "state.dir": (tmp_path / "state").as_uri(),
        "state.local-dir": str(tmp_path / "local"),
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }


@pytest.mark.parametrize("backend", [{"state.backend": "rocksdb"}, LSM], ids=["rocksdb", "lsm"])
def test_sigkill_then_rerun_restores_exact_counts_on_file_storage(
    process_runner: ProcessRunner, tmp_path: Path, backend: dict[str, str]
) -> None:
    kill_mid_stream_and_rerun(process_runner, tmp_path / "out", on_file_storage(tmp_path, backend))


def test_sigkill_with_asynchronous_process_functions_in_flight_restores_exact_counts(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    # Each record awaits between reading its key's count and updating it: records of other keys
    # run meanwhile, and checkpoints are taken with records in flight.
    kill_mid_stream_and_rerun(
        process_runner, tmp_path / "out", on_file_storage(tmp_path, LSM), KEYED_COUNT_ASYNC="1"
    )


@pytest.mark.parametrize("backend", [{"state.backend": "memory"}, LSM], ids=["memory", "lsm"])
def test_sigkill_then_rerun_restores_exact_counts_on_s3(
    process_runner: ProcessRunner, tmp_path: Path, s3_bucket: S3Bucket, backend: dict[str, str]
) -> None:
    defines = {
        **backend,
        "state.dir": s3_bucket.path("state"),
        "checkpoint.dir": s3_bucket.path("checkpoints"),
        "dfs.storage-options": json.dumps(s3_bucket.storage_options),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }
    kill_mid_stream_and_rerun(process_runner, tmp_path / "out", defines)
    assert s3_bucket.filesystem().ls(s3_bucket.path("checkpoints", "keyed-count"))


def test_sigint_stops_after_a_final_checkpoint_and_a_rerun_finishes_exactly(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    defines = {
        "state.dir": (tmp_path / "state").as_uri(),
        "checkpoint.dir": (tmp_path / "checkpoints").as_uri(),
        "checkpoint.interval": "200ms",
    }
    output = tmp_path / "out"
    first = start_run(process_runner, output, defines, KEYED_COUNT_HOLD_AT=HOLD_AT)
    first.wait_for_output("checkpoint 2 completed", timeout=60)
    os.killpg(first.pid, signal.SIGINT)  # type: ignore[arg-type]
    assert first.wait(timeout=60) == 0
    log = first.output()
    assert "(final)" in log and "job keyed-count stopped in" in log
    stopped_at = sum(len(counts) for counts in committed_updates(output).values())
    assert 0 < stopped_at < RECORDS  # the final checkpoint committed what was processed
    second = start_run(process_runner, output, defines)
    assert second.wait(timeout=90) == 0, second.describe("failed")
    expected = expected_counts(RECORDS)
    assert {key: sorted(counts) for key, counts in committed_updates(output).items()} == {
        key: list(range(1, n + 1)) for key, n in expected.items()
    }


def run_to_exit(runner: ProcessRunner, args: list[str], **env: str) -> tuple[int, str]:
    process = runner.python(module="streamlet.cli", args=args, env=env)
    return process.wait(timeout=60), process.output()


def test_poison_record_fails_naming_file_operator_and_record_after_restarts(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    code, output = run_to_exit(
        process_runner,
        ["run", str(JOB), "-D", f"checkpoint.dir={(tmp_path / 'chk').as_uri()}"]
        + ["-D", f"state.dir={(tmp_path / 'state').as_uri()}"]
        + ["-D", "restart.attempts=2", "-D", "restart.delay=10ms"],
        KEYED_COUNT_OUTPUT=str(tmp_path / "out"),
        KEYED_COUNT_RECORDS="100",
        KEYED_COUNT_POISON="42",
    )
    assert code == 1
    error = output.strip().splitlines()[-1]
    assert error.startswith("error: operator 'count' failed at ")
    assert f"{JOB}:" in error
    assert "on record 'poison': ValueError: cannot count poison" in error
    assert "restart 1 of 2" in output and "restart 2 of 2" in output
    assert "restart 3" not in output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from streamlet import Job\njob = Job('x'\n", ":2: syntax error: "),
        ("import streamlet\n", "defines no streamlet.Job"),
        ("raise RuntimeError('broken module')\n", "importing the job module failed at "),
    ],
)
def test_bad_job_module_gives_a_clear_error_naming_the_file(
    process_runner: ProcessRunner, tmp_path: Path, source: str, message: str
) -> None:
    job_file = tmp_path / "bad_job.py"
    job_file.write_text(source)
    code, output = run_to_exit(process_runner, ["run", str(job_file)])
    assert code == 1
    assert output.startswith(f"error: {job_file}")
    assert message in output


def test_the_example_wordcount_job_loads_and_plans() -> None:
    job = load_job(Path(__file__).resolve().parents[2] / "jobs" / "wordcount.py")
    chains = [chain.name for chain in job.graph.plan(2).chains]
    assert chains == ["sentences -> split", "count -> format -> print"]
