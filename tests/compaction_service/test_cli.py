"""`streamlet compaction-service` and `python -m benchmarks compaction` as a user runs them."""

import json
import re
import subprocess
import sys

import pytest

from compaction_service.client import ClientTls, RemoteCompactor
from streamlet.cli import main
from tests.compaction_service.helpers import make_spec, write_tables
from tests.support.processes import REPO_ROOT

READY = re.compile(r"compaction service listening on 127\.0\.0\.1:(\d+)")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--policy", "fastest"], "unknown policy"),
        (["--tls-cert", "c.pem"], "go together"),
        (["--token-file", "/nonexistent/token"], "No such file"),
    ],
)
def test_bad_options_exit_with_2(extra, message, capsys) -> None:
    argv = ["compaction-service", "--port", "0", "--allowed-root", "file:///tmp", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_serves_tls_with_the_options_given(process_runner, tmp_path, tls_files) -> None:
    root = f"file://{tmp_path}/data"
    options = tmp_path / "storage.json"
    options.write_text(json.dumps({"auto_mkdir": True}))
    process = process_runner.python(
        module="streamlet.cli",
        args=[
            "compaction-service",
            "--port",
            "0",
            "--allowed-root",
            root,
            "--workers",
            "2",
            "--policy",
            "priority",
            "--tls-cert",
            str(tls_files.server_cert),
            "--tls-key",
            str(tls_files.server_key),
            "--storage-options-file",
            str(options),
        ],
    )
    port = int(READY.search(process.wait_for_output(READY)).group(1))
    assert "workers=2, policy=priority" in process.output()
    compactor = RemoteCompactor([f"127.0.0.1:{port}"], tls=ClientTls(str(tls_files.ca)))
    try:
        spec = make_spec(f"{root}/db", write_tables(f"{root}/db", tables=2, entries=200))
        assert compactor.submit(spec, {}).result(timeout=30).outputs
        assert compactor.stats.remote_ok == 1
    finally:
        compactor.close()
    process.terminate()
    assert process.returncode == 0  # SIGTERM stops it cleanly


def test_benchmark_runs_all_three_variants() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "compaction", "--quick", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    ).stdout
    figures = json.loads(out)
    a, b, c = (
        figures["in_process_s"],
        figures["service_1_worker_s"],
        figures["service_2_workers_subcompactions_s"],
    )
    assert a > 0 and b > 0 and c > 0
    assert figures["remote_overhead"] == pytest.approx(b / a)
    assert figures["subcompaction_speedup"] == pytest.approx(b / c)
