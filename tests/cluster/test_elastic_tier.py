"""The compactor tier grows and shrinks under running jobs (issue: an elastic compactor tier), with
real processes: a compactor task manager that joins serves within 10 s without a submit or a job
restart; one drained with SIGTERM and one SIGKILLed lose no compaction (the jobs compact locally
meanwhile) and a compactor that comes back gets work again; the counts are exactly-once. The jobs
find the compactors through `job:compaction-service`, or through a real DNS server whose answer
follows the tier (`dns://<server>/compactors.test:<port>`). The scenario is
`benchmarks/scaleout.py`'s (which also times it)."""

from pathlib import Path
from typing import Any

from benchmarks.scaleout import scenario
from tests.support.processes import ProcessRunner


def _assert_elastic(figures: dict[str, Any]) -> None:
    assert figures["exact"], figures
    assert figures["lost_compactions"] == 0, figures
    assert figures["failovers"] == 0, figures
    assert figures["fallback_compactions"] > 0, figures  # while no compactor served
    assert figures["pickup_s"] < 10, figures  # the bound for a new compactor
    assert figures["return_s"] < 10, figures


def test_compactors_join_drain_die_and_return_under_running_jobs(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    _assert_elastic(scenario(process_runner, tmp_path, records=20_000))


def test_compactors_join_drain_die_and_return_under_running_jobs_found_through_dns(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    _assert_elastic(scenario(process_runner, tmp_path, records=20_000, address="dns"))
