"""Exactly-once with state reads in flight: `streamlet run` of the keyed count on the lsm backend,
its tables on S3 behind a proxy that delays every read by 10 ms (tests.support.delay_proxy), with
no block cache and a tiny state cache, so that every batch reads its keys' state ahead from S3
while it runs; SIGKILLed mid-stream and run again, it restores its latest checkpoint exactly."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.test_faults import kill_mid_stream_and_rerun
from tests.support.delay_proxy import DelayProxy
from tests.support.fixtures import S3Bucket
from tests.support.processes import ProcessRunner
from tests.support.s3_server import S3Server

READ_DELAY_MS = 10


@pytest.fixture(scope="module")
def delay_proxy(s3_server: S3Server) -> Iterator[DelayProxy]:
    with DelayProxy(s3_server.endpoint_url, READ_DELAY_MS) as proxy:
        yield proxy


def test_sigkill_while_state_reads_are_in_flight_restores_exact_counts(
    process_runner: ProcessRunner, tmp_path: Path, s3_bucket: S3Bucket, delay_proxy: DelayProxy
) -> None:
    options = s3_bucket.storage_options
    delayed = {**options, "client_kwargs": {**options["client_kwargs"]}}
    delayed["client_kwargs"]["endpoint_url"] = delay_proxy.endpoint_url
    lsm = {"lsm.memtable_bytes": 1024, "lsm.block_size": 128, "lsm.block_cache_bytes": 0}
    defines = {
        "state.backend": "lsm",
        "state.options": json.dumps(lsm),
        "state.cache-bytes": "2000",
        "state.dir": s3_bucket.path("state"),
        "checkpoint.dir": s3_bucket.path("checkpoints"),
        "dfs.storage-options": json.dumps(delayed),
        "checkpoint.interval": "200ms",
        "progress.interval": "100ms",
    }
    before = delay_proxy.stats()
    kill_mid_stream_and_rerun(process_runner, tmp_path / "out", defines)
    after = delay_proxy.stats()
    assert after["reads"] - before["reads"] > 100  # the job's state was read from S3 ...
    assert after["max_in_flight"] > 2  # ... many reads at once
