"""Bad input to a real job manager with the right token is a 400 that names the problem, never a
500: JSON nested too deeply on every POST route, file names that are not plain names, and an
archive that tries to write through a symbolic link."""

import base64
import io
import stat
import zipfile
from pathlib import Path

import pytest

from streamlet.cluster.openapi import DOCUMENT
from streamlet.cluster.rest import MAX_JSON_DEPTH
from tests.cluster.harness import Cluster

ENDLESS = Path(__file__).parent / "jobs" / "endless.py"
POST_ROUTES = [path for path, methods in DOCUMENT["paths"].items() if "post" in methods]


def _nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000], ids=["deep", "very-deep"])
def test_json_nested_too_deeply_is_a_400_on_every_post_route(cluster: Cluster, depth: int) -> None:
    assert len(POST_ROUTES) == 6
    for route in POST_ROUTES:
        path = route.replace("{job_id}", "nope").replace("{tm_id}", "nope")
        status, answer = cluster.api("POST", path, _nested(depth))
        if route.endswith("/cancel"):  # reads no body: the unknown job is the problem
            assert status == 404, (route, answer)
        else:
            assert status == 400, (route, answer)
            assert f"nested more than {MAX_JSON_DEPTH} levels" in answer["error"], route
    options: list = []
    for _ in range(MAX_JSON_DEPTH):
        options = [options]
    nested_config = {
        "artifact": {"kind": "module", "module": "compaction_service"},
        "config": {"dfs.storage-options": {"a": options}},
    }
    status, answer = cluster.api("POST", "/api/v1/jobs", nested_config)
    assert status == 400 and "nested more than" in answer["error"]
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})


@pytest.mark.parametrize(
    ("file_name", "problem"),
    [
        ("sub/job.py", "must not contain '/'"),
        ("job\x00.py", "NUL"),
        ("j" * 10_000 + ".py", "10003 bytes long (at most 255)"),
        ("..", "must not be empty, '.' or '..'"),
        (7, "must be a string"),
    ],
    ids=["slash", "nul", "long", "dotdot", "number"],
)
def test_a_file_name_that_is_not_a_plain_name_is_a_400(
    cluster: Cluster, file_name: object, problem: str
) -> None:
    status, answer = cluster.api(
        "POST",
        "/api/v1/jobs",
        {
            "artifact": {"kind": "file", "file_name": file_name},
            "data_b64": base64.b64encode(ENDLESS.read_bytes()).decode(),
        },
    )
    assert status == 400, answer
    assert "bad file name" in answer["error"] and problem in answer["error"], answer
    assert len(answer["error"]) < 300  # a 10,000-character name is not echoed whole
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})


def test_an_archive_with_a_symbolic_link_is_a_400(cluster: Cluster, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zipped.writestr(link, str(outside))
        zipped.writestr("link/evil.py", "raise SystemExit('escaped')\n")
        zipped.writestr("job.py", ENDLESS.read_text())
    status, answer = cluster.api(
        "POST",
        "/api/v1/jobs",
        {
            "artifact": {"kind": "archive", "file_name": "evil.zip", "entry": "job.py"},
            "data_b64": base64.b64encode(buffer.getvalue()).decode(),
        },
    )
    assert status == 400, answer
    assert "evil.zip: entry 'link' is a symbolic link" in answer["error"], answer
    assert list(outside.iterdir()) == []
    assert cluster.api("GET", "/api/v1/jobs") == (200, {"jobs": []})
