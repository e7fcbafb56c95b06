"""The job manager's REST API and the CLI on real processes: the token, the OpenAPI document,
rejected submissions, and submit/list/status/checkpoints/cancel of a running job."""

import json
import re
import zipfile
from pathlib import Path

import pytest
from aiohttp import web

from streamlet.cluster.ha import HaStore
from streamlet.cluster.jobmanager import JobManager
from streamlet.cluster.openapi import DOCUMENT
from streamlet.cluster.rest import create_app
from streamlet.config import Configuration
from tests.cluster.harness import TOKEN, Cluster
from tests.support.processes import ProcessRunner

ENDLESS = str(Path(__file__).parent / "jobs" / "endless.py")


def test_the_openapi_document_describes_every_route() -> None:
    manager = JobManager(Configuration(), HaStore("memory://openapi-test", {}))
    app = create_app(manager, TOKEN)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and isinstance(route.resource, web.Resource)
    }
    described = {
        (method, path) for path, methods in DOCUMENT["paths"].items() for method in methods
    }
    assert served == described


def test_the_jobmanager_needs_a_token(process_runner: ProcessRunner, tmp_path: Path) -> None:
    process = process_runner.python(
        module="streamlet.cli",
        args=["jobmanager", "--port", "0"],
        env={"STREAMLET_CLUSTER_TOKEN": None, "STREAMLET_CLUSTER_DIR": tmp_path.as_uri()},
    )
    assert process.wait() == 2
    assert "no cluster token" in process.output()


def test_every_call_needs_the_token(cluster: Cluster) -> None:
    assert "listening on http://127.0.0.1:" in cluster.jobmanager.output()  # loopback by default
    calls = [
        ("GET", "/api/v1/jobs", None),
        ("POST", "/api/v1/jobs", {"artifact": {"kind": "module", "module": "compaction_service"}}),
        ("GET", "/api/v1/taskmanagers", None),
        ("POST", "/api/v1/taskmanagers", {"id": "x", "host": "h", "slots": 1}),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", "/metrics", None),
    ]
    for method, path, body in calls:
        for token in (None, "wrong"):
            status, answer = cluster.api(method, path, body, token=token)
            assert status == 401, (method, path, answer)
            assert "unauthorized" in answer["error"]
            assert "set STREAMLET_CLUSTER_TOKEN" in answer["error"]
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})
    status, document = cluster.api("GET", "/api/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    listed = cluster.cli("list", token=None)
    assert listed.returncode == 1 and "unauthorized" in listed.stderr
    submitted = cluster.cli("submit", ENDLESS, token="wrong")
    assert submitted.returncode == 1 and "unauthorized" in submitted.stderr
    for command, token in [
        (["list"], None),
        (["submit", ENDLESS], "wrong"),
        (["status", "nope"], None),
        (["cancel", "nope"], "wrong"),
    ]:
        refused = cluster.cli(*command, token=token)
        assert refused.returncode == 1, command
        assert "set STREAMLET_CLUSTER_TOKEN (or cluster.token)" in refused.stderr, command


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = (\n", r"broken\.py:1: syntax error"),
        ("raise RuntimeError('boom')\n", r"broken\.py.*RuntimeError: boom"),
        ("x = 1\n", r"defines no streamlet\.Job"),
    ],
)
def test_a_broken_module_is_rejected(
    cluster: Cluster, tmp_path: Path, source: str, message: str
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(source)
    result = cluster.cli("submit", str(broken))
    assert result.returncode == 1
    assert re.search(message, result.stderr), result.stderr
    assert "HTTP 400" in result.stderr
    assert "/tmp/streamlet-submit" not in result.stderr
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})


def test_bad_submissions_are_rejected(cluster: Cluster) -> None:
    result = cluster.cli("submit", "no_such_module_here")
    assert result.returncode == 1 and "cannot import job module no_such_module_here" in (
        result.stderr
    )
    result = cluster.cli("submit", ENDLESS, "-D", "checkpoint.intervall=1s")
    assert result.returncode == 1 and "did you mean checkpoint.interval" in result.stderr
    status, answer = cluster.api(
        "POST",
        "/api/v1/jobs",
        {"artifact": {"kind": "module", "module": "compaction_service"}, "parallelism": 0},
    )
    assert status == 400 and "parallelism" in answer["error"]
    status, answer = cluster.api(
        "POST",
        "/api/v1/jobs",
        {"artifact": {"kind": "file", "file_name": "../x.py"}, "data_b64": "eA=="},
    )
    assert status == 400 and "bad file name" in answer["error"]
    assert cluster.api("GET", "/api/v1/jobs/nope")[0] == 404


def test_submit_list_status_checkpoints_cancel(cluster: Cluster) -> None:
    tm = cluster.start_taskmanager(slots=2)
    job_id = cluster.submit(ENDLESS, "-p", "2", "-D", "checkpoint.interval=200ms")
    assert re.fullmatch(r"[0-9a-f]{16}", job_id)
    job = cluster.wait_job(job_id, lambda j: (j["latest_checkpoint"] or 0) >= 2)
    assert job["status"] == "RUNNING" and job["task_managers"] == [tm]
    assert job["metrics"]["records_in"] > 0

    listed = cluster.cli("list")
    assert listed.returncode == 0
    assert re.search(rf"^{job_id}\s+endless\s+RUNNING\s+2\s+\d+", listed.stdout, re.MULTILINE)
    status = cluster.cli("status", job_id)
    assert json.loads(status.stdout)["name"] == "endless"

    _, checkpoints = cluster.api("GET", f"/api/v1/jobs/{job_id}/checkpoints")
    assert checkpoints["latest"]["checkpoint_id"] >= 2
    assert checkpoints["directory"].startswith(str(cluster.dir))
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert [(m["id"], m["slots"], m["free_slots"]) for m in managers["task_managers"]] == [
        (tm, 2, 0)
    ]

    cancelled = cluster.cli("cancel", job_id)
    assert cancelled.returncode == 0 and job_id in cancelled.stdout
    job = cluster.wait_job(job_id, lambda j: j["status"] == "CANCELED")
    assert job["task_managers"] == []
    _, managers = cluster.api("GET", "/api/v1/taskmanagers")
    assert managers["task_managers"][0]["free_slots"] == 2
    assert cluster.api("GET", "/api/v1/jobs/nope/cancel")[0] in (404, 405)


ARCHIVE_JOB = """
from helper import WORDS
from streamlet import Job
from streamlet.connectors import CollectionSource, FileSink

job = Job("archived")
job.source(CollectionSource(WORDS), name="words").map(str.upper).sink(FileSink({output!r}))
"""


def test_an_archive_with_its_files_runs(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_taskmanager(slots=1)
    output = tmp_path / "archived-output"
    archive = tmp_path / "archived.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", ARCHIVE_JOB.format(output=output.as_uri()))
        zipped.writestr("helper.py", "WORDS = ['alpha', 'beta', 'gamma']\n")
    job_id = cluster.submit(str(archive), "--entry", "main.py")
    job = cluster.wait_job(job_id, lambda j: j["status"] in ("FINISHED", "FAILED"))
    assert job["status"] == "FINISHED", job["error"]
    lines = [line for part in output.glob("part-*") for line in part.read_text().split()]
    assert sorted(lines) == ["ALPHA", "BETA", "GAMMA"]
    missing = cluster.cli("submit", str(archive), "--entry", "nope.py")
    assert missing.returncode == 1 and "has no entry module nope.py" in missing.stderr
