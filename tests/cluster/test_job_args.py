"""A job module's arguments after `--`, run locally and submitted to a real cluster; `submit
--wait` exits with the job's outcome; `list` and `status` print JSON with `--json`."""

import json
from pathlib import Path

from tests.cluster.harness import Cluster
from tests.support.processes import ProcessRunner

ARGV_JOB = str(Path(__file__).parent / "jobs" / "argv_job.py")
ENDLESS = str(Path(__file__).parent / "jobs" / "endless.py")


def _written(output: Path) -> list[str]:
    return sorted(line for part in output.glob("part-*") for line in part.read_text().splitlines())


def test_run_passes_the_arguments_after_dashes_to_the_job(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    output = tmp_path / "output"
    process = process_runner.python(
        module="streamlet.cli",
        args=["run", ARGV_JOB, "-D", f"checkpoint.dir={(tmp_path / 'checkpoints').as_uri()}"]
        + ["--", output.as_uri(), "alpha", "two words", "-p"],
    )
    assert process.wait(timeout=60) == 0, process.describe("failed")
    assert _written(output) == sorted(["argv_job.py", "alpha", "two words", "-p"])


def test_submit_passes_the_arguments_and_waits_for_the_end(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_taskmanager(slots=1)
    output = tmp_path / "output"
    finished = cluster.cli("submit", ARGV_JOB, "--wait", "--", output.as_uri(), "beta", "-D")
    assert finished.returncode == 0, finished.stderr
    job_id, final = finished.stdout.splitlines()
    assert final == f"{job_id} FINISHED"
    assert _written(output) == sorted(["argv_job.py", "beta", "-D"])
    assert cluster.job(job_id)["name"] == "argv"

    failed = cluster.cli("submit", ARGV_JOB, "--wait", "--", (tmp_path / "o2").as_uri(), "fail")
    assert failed.returncode == 1
    job_id, final = failed.stdout.splitlines()
    assert final == f"{job_id} FAILED"
    assert "the job was asked to fail" in failed.stderr

    rejected = cluster.cli("submit", ARGV_JOB, "--wait")  # no OUTPUT: the module cannot load
    assert rejected.returncode == 1 and "ValueError: not enough values to unpack" in (
        rejected.stderr
    )
    wrong = cluster.cli("list", "--", "x")
    assert wrong.returncode == 2 and "only run and submit take job arguments" in wrong.stderr


def test_list_and_status_print_json(cluster: Cluster) -> None:
    cluster.start_taskmanager(slots=1)
    job_id = cluster.submit(ENDLESS)
    cluster.wait_job(job_id, lambda j: j["status"] == "RUNNING")
    listed = cluster.cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    (job,) = json.loads(listed.stdout)
    assert (job["id"], job["name"], job["status"]) == (job_id, "endless", "RUNNING")
    status = cluster.cli("status", job_id, "--json")
    assert status.returncode == 0, status.stderr
    assert len(status.stdout.splitlines()) == 1
    assert json.loads(status.stdout)["config"]["cluster.dir"] == cluster.dir.as_uri()
