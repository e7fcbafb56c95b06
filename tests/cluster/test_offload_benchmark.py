"""`python -m benchmarks offload --quick --json` runs end to end: both runs compact, the remote
one entirely on the service (no fallback, no compaction CPU left in the job's processes)."""

import json

from tests.support.processes import ProcessRunner


def test_the_offload_benchmark_moves_compaction_off_the_job(
    process_runner: ProcessRunner,
) -> None:
    benchmark = process_runner.python(module="benchmarks", args=["offload", "--quick", "--json"])
    assert benchmark.wait(timeout=280) == 0, benchmark.describe("failed")
    last = [line for line in benchmark.output().splitlines() if line.startswith("{")][-1]
    figures = json.loads(last)
    assert figures["job_core"] != figures["service_core"]
    assert figures["compactions_local_run"] > 0 and figures["compactions_remote_run"] > 0
    assert figures["remote_fallbacks"] == 0
    assert figures["job_compaction_cpu_share"] <= 0.02
    assert figures["job_compaction_cpu_share_local"] > 0.05
    assert figures["service_cpu_seconds"] > 0
    assert figures["throughput_ratio"] > 0
