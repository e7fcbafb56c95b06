"""Fixtures of the cluster tests: `cluster`, a job manager (started) with no task managers yet."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster
from tests.support.processes import ProcessRunner


@pytest.fixture
def cluster(process_runner: ProcessRunner, tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(process_runner, tmp_path)
    running.start_jobmanager()
    yield running
