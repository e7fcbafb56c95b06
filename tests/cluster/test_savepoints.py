"""Savepoints on a cluster of real processes: `streamlet savepoint` of a running job spread over
task managers (the barrier crosses the exchange), `streamlet stop --savepoint`, the savepoint
moved to another directory and `streamlet submit -s` from there at another parallelism (2 -> 3),
a task manager SIGKILLed after the restore: the counts and the FileSink output are exact. Also: a
canonical rocksdb savepoint restored into memory and lsm at other parallelisms, a savepoint that
outlives retention and cancellation until disposed of, bad input refused before anything is
written, and the commands of docs/savepoints.md."""

import json
import re
import shlex
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streamlet.cli import _split_job_args, build_parser
from tests.cluster.exactly_once import JOB, assert_exactly_once, expected_counts
from tests.cluster.harness import Cluster
from tests.runtime.jobs import keyed_count as keyed_count_job
from tests.runtime.test_faults import committed_updates
from tests.support.checkpoints import referenced_files
from tests.support.processes import ProcessRunner

RECORDS = 9000


def metadata(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "_metadata").read_text())


def savepoint_dir(url: str) -> Path:
    assert url.startswith("file://"), url
    return Path(url.removeprefix("file://"))


def keyed_count(
    cluster: Cluster, parallelism: int, backend: str, *flags: str, job_args: list[str]
) -> str:
    """Submit the keyed-count job; its id."""
    return cluster.submit(
        JOB,
        "-p",
        str(parallelism),
        "-D",
        f"state.backend={backend}",
        "-D",
        "checkpoint.interval=200ms",
        *flags,
        "--",
        *job_args,
    )


@pytest.mark.parametrize("backend", ["memory", "rocksdb", "lsm"])
def test_savepoint_stop_and_a_relocated_rescaled_restore_with_a_killed_task_manager(
    process_runner: ProcessRunner, tmp_path: Path, backend: str
) -> None:
    cluster = Cluster(
        process_runner, tmp_path, KEYED_COUNT_RECORDS=str(RECORDS), KEYED_COUNT_RATE="3000"
    )
    cluster.start_jobmanager()
    for _ in range(4):  # one slot each: a job of parallelism p spans p task managers
        cluster.start_taskmanager(slots=1)
    output, release = tmp_path / "output", tmp_path / "release"

    # A job of parallelism 2 that cannot end by itself (it holds after 1500 records a subtask).
    first = keyed_count(
        cluster, 2, backend, job_args=["--output", str(output), "--hold-at", "1500"]
    )
    cluster.wait_job(first, lambda j: (j["latest_checkpoint"] or 0) >= 1)
    taken = cluster.cli("savepoint", first)
    assert taken.returncode == 0, taken.stderr
    running = savepoint_dir(taken.stdout.strip())
    assert running.parent.name == "keyed-count" and running.name.startswith("savepoint-")
    assert metadata(running)["kind"] == "savepoint"
    assert cluster.job(first)["status"] == "RUNNING"  # an intermediate savepoint: it goes on

    stop_dir = tmp_path / "stop-savepoint"
    stopped = cluster.cli("stop", first, "--savepoint", str(stop_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == stop_dir.as_uri()
    cluster.wait_job(first, lambda j: j["status"] == "CANCELED")
    status, listed = cluster.api("GET", f"/api/v1/jobs/{first}/savepoints")
    assert status == 200
    assert [(s["path"], s["stop"]) for s in listed["savepoints"]] == [
        (stop_dir.as_uri(), True),
        (taken.stdout.strip(), False),
    ]
    saved = metadata(stop_dir)
    assert saved["savepoint_format"] == "native"
    (count_uid,) = [uid for uid in saved["operators"] if uid.endswith("count")]
    handles = [state["backend"] for state in saved["operators"][count_uid]["subtasks"]]
    assert [handle["backend"] for handle in handles] == [backend, backend]
    files = referenced_files(saved)
    assert files and all("://" not in path and not path.startswith("/") for path in files)

    # Moved elsewhere (relocatable), restored at parallelism 3.
    moved = tmp_path / "elsewhere" / "moved-savepoint"
    shutil.move(stop_dir, moved)
    second = keyed_count(
        cluster,
        3,
        backend,
        "-s",
        str(moved),
        job_args=["--output", str(output), "--hold-at", "1000", "--release-file", str(release)],
    )
    job = cluster.wait_job(
        second, lambda j: j["status"] == "RUNNING" and j["latest_checkpoint"] is not None
    )
    assert len(job["task_managers"]) == 3
    leader = job["task_managers"][0]
    logged = cluster.task_managers[leader].output()
    assert f"restoring checkpoint {saved['checkpoint_id']} of job keyed-count" in logged
    cluster.task_managers[leader].kill()
    # Its peers notice at once and the job restarts until the lost one is no longer offered.
    cluster.wait_job(
        second,
        lambda j: (
            j["status"] == "RUNNING" and j["task_managers"] and leader not in j["task_managers"]
        ),
    )
    release.touch()
    job = cluster.wait_job(second, lambda j: j["status"] == "FINISHED", timeout=60)
    assert job["failovers"] >= 1
    assert_exactly_once(output, RECORDS)


def test_a_canonical_rocksdb_savepoint_restores_into_memory_and_lsm_at_other_parallelisms(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster = Cluster(
        process_runner, tmp_path, KEYED_COUNT_RECORDS=str(RECORDS), KEYED_COUNT_RATE="3000"
    )
    cluster.start_jobmanager()
    for _ in range(2):
        cluster.start_taskmanager(slots=2)
    before = tmp_path / "before"
    first = keyed_count(
        cluster, 2, "rocksdb", job_args=["--output", str(before), "--hold-at", "1500"]
    )
    cluster.wait_job(first, lambda j: (j["latest_checkpoint"] or 0) >= 1)
    stopped = cluster.cli("stop", first, "--format", "canonical")  # to the default directory
    assert stopped.returncode == 0, stopped.stderr
    cluster.wait_job(first, lambda j: j["status"] == "CANCELED")
    saved = savepoint_dir(stopped.stdout.strip())
    assert metadata(saved)["savepoint_format"] == "canonical"
    handles = [state["backend"] for state in metadata(saved)["operators"]["2-count"]["subtasks"]]
    assert [(h["backend"], h["store"]["written_by"]) for h in handles] == [
        ("canonical", "rocksdb")
    ] * 2

    # The output committed up to the savepoint, then each restored job's own.
    jobs = {}
    for backend, parallelism in (("memory", 3), ("lsm", 1)):
        output = tmp_path / backend
        shutil.copytree(before, output)
        jobs[backend] = keyed_count(
            cluster, parallelism, backend, "-s", str(saved), job_args=["--output", str(output)]
        )
    for backend, job_id in jobs.items():
        cluster.wait_job(job_id, lambda j: j["status"] == "FINISHED", timeout=60)
        assert_exactly_once(tmp_path / backend, RECORDS)


def consumed_counts(saved: dict[str, Any]) -> Counter:
    """Each word's count in a savepoint of keyed-count: the records its source had read (the
    generator's splits `[next, stride]`: the indices below `next` in the split's progression)."""
    (source,) = [op for uid, op in saved["operators"].items() if uid.endswith("words")]
    indices = [
        index
        for state in source["subtasks"]
        for next_index, stride in state["position"]
        for index in range(next_index % stride, next_index, stride)
    ]
    return Counter(keyed_count_job.WORDS_SOURCE.record(index) for index in indices)


def test_a_savepoint_outlives_retention_and_cancellation_until_disposed(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster = Cluster(
        process_runner, tmp_path, KEYED_COUNT_RECORDS=str(RECORDS), KEYED_COUNT_RATE="3000"
    )
    cluster.start_jobmanager()
    cluster.start_taskmanager(slots=2)
    first = keyed_count(
        cluster,
        2,
        "rocksdb",
        "-D",
        "checkpoint.retained=1",
        job_args=["--output", str(tmp_path / "before"), "--hold-at", "2000"],
    )
    cluster.wait_job(first, lambda j: (j["latest_checkpoint"] or 0) >= 1)
    target = tmp_path / "savepoints" / "kept"
    taken = cluster.cli("savepoint", first, str(target))
    assert taken.returncode == 0, taken.stderr
    saved = metadata(target)
    files = {target / path: size for path, size in sizes(saved).items()}
    assert len(files) > 4  # every rocksdb file of both subtasks, each in the savepoint
    # Many checkpoints later (one retained: each releases the one before), then cancelled.
    cluster.wait_job(first, lambda j: (j["latest_checkpoint"] or 0) >= saved["checkpoint_id"] + 6)
    assert cluster.cli("cancel", first).returncode == 0
    cluster.wait_job(first, lambda j: j["status"] == "CANCELED")
    assert {path: path.stat().st_size for path in files if path.exists()} == files

    # It restores: the new job counts on from the savepoint's state, exactly.
    after = tmp_path / "after"
    second = keyed_count(
        cluster, 2, "rocksdb", "-s", str(target), job_args=["--output", str(after)]
    )
    cluster.wait_job(second, lambda j: j["status"] == "FINISHED", timeout=60)
    counted = consumed_counts(saved)
    updates = committed_updates(after)
    for word, total in expected_counts(RECORDS).items():
        assert sorted(updates[word]) == list(range(counted[word] + 1, total + 1)), word

    disposed = cluster.cli("savepoint", "--dispose", str(target))
    assert disposed.returncode == 0, disposed.stderr
    assert disposed.stdout.strip() == f"disposed of {target.as_uri()}"
    assert not target.exists()
    again = cluster.cli("savepoint", "--dispose", str(target))
    assert again.returncode == 1 and "the path does not exist" in again.stderr


def sizes(saved: dict[str, Any]) -> dict[str, int]:
    """The size of every file a savepoint's metadata references, by its (relative) path."""
    found: dict[str, int] = {}
    pending: list[Any] = [saved]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "path" in node and "checksum" in node:
                assert not node["path"].startswith("/") and "://" not in node["path"], node
                found[node["path"]] = node["size"]
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


CONFLICTING = str(Path(__file__).parent / "jobs" / "conflicting_count.py")
ENDLESS = str(Path(__file__).parent / "jobs" / "endless.py")


def test_bad_savepoint_input_is_refused_before_anything_is_written(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    cluster = Cluster(process_runner, tmp_path, KEYED_COUNT_RECORDS=str(RECORDS))
    cluster.start_jobmanager()
    cluster.start_taskmanager(slots=2)
    first = keyed_count(
        cluster, 2, "memory", job_args=["--output", str(tmp_path / "out"), "--hold-at", "1000"]
    )
    cluster.wait_job(first, lambda j: (j["latest_checkpoint"] or 0) >= 1)

    # A savepoint's target must be a new or empty directory; a format must exist.
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    refused = cluster.cli("savepoint", first, str(occupied))
    assert refused.returncode == 1
    assert "the directory is not empty" in refused.stderr and "HTTP 500" in refused.stderr
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    status, answer = cluster.api("POST", f"/api/v1/jobs/{first}/savepoints", {"format": "zip"})
    assert status == 400 and "format must be native or canonical" in answer["error"]
    status, answer = cluster.api("POST", f"/api/v1/jobs/{first}/savepoints", {"url": 7})
    assert status == 400 and "url must be a non-empty string" in answer["error"]
    assert cluster.job(first)["status"] == "RUNNING"
    assert cluster.api("GET", f"/api/v1/jobs/{first}/savepoints")[1]["savepoints"] == []

    saved = tmp_path / "saved"
    assert cluster.cli("stop", first, "--savepoint", str(saved)).returncode == 0
    cluster.wait_job(first, lambda j: j["status"] == "CANCELED")
    cluster.jobmanager.kill()  # the job's savepoints are HA metadata: a new job manager has them
    cluster.start_jobmanager()
    _, listed = cluster.api("GET", f"/api/v1/jobs/{first}/savepoints")
    assert [s["path"] for s in listed["savepoints"]] == [saved.as_uri()]
    for command in (["savepoint", first], ["stop", first]):
        late = cluster.cli(*command)
        assert late.returncode == 1 and "is CANCELED: only a running job" in late.stderr
        assert "HTTP 409" in late.stderr
    checkpoint = next((cluster.dir / "jobs" / first / "checkpoints" / "keyed-count").glob("chk-*"))
    kept = cluster.cli("savepoint", "--dispose", str(checkpoint))
    assert kept.returncode == 1 and "not a savepoint" in kept.stderr and checkpoint.exists()

    damaged = tmp_path / "damaged"
    shutil.copytree(saved, damaged)
    (damaged / "_metadata").write_text('{"format": 1, "job": "keyed-count"')
    cases = [
        ([JOB, "-s", str(tmp_path / "missing")], "the path does not exist"),
        ([JOB, "-s", str(damaged)], "is damaged: it is not JSON"),
        ([ENDLESS, "-s", str(saved)], "has no operator of this job"),
        (
            [CONFLICTING, "-s", str(saved)],
            "operator 'count': state 'count' is a value state; it cannot be used as a list state",
        ),
        ([JOB, "-s", str(saved), "-p", "200"], "parallelism 200, above parallelism.max (128)"),
    ]
    for args, message in cases:
        result = cluster.cli("submit", *args)
        assert result.returncode == 1, args
        assert message in result.stderr and "HTTP 400" in result.stderr, (args, result.stderr)
    _, listed = cluster.api("GET", "/api/v1/jobs")
    assert [job["id"] for job in listed["jobs"]] == [first]
    assert [p.name for p in (cluster.dir / "jobs").iterdir()] == [first]


def doc_commands() -> list[list[str]]:
    """The `streamlet ...` command lines of docs/savepoints.md's shell blocks."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "savepoints.md").read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "streamlet":
                commands.append(words[1:])
    return commands


def test_the_commands_of_the_savepoints_page_parse() -> None:
    commands = doc_commands()
    assert {tuple(c[:1]) for c in commands} == {("savepoint",), ("stop",), ("submit",), ("run",)}
    assert any("--dispose" in c for c in commands) and any("-s" in c for c in commands)
    for command in commands:
        argv, _ = _split_job_args(command)
        build_parser().parse_args(argv)  # argparse exits on a command it does not take
