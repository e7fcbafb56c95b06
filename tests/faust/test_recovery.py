"""A real Faust worker (Tansu broker, moto S3) counting words in a table on the streamlet store,
SIGKILLed and started again on a wiped local directory (a new node), with local or remote
compaction. A second table on Faust's memory store, which replays its whole changelog, is the
reference for the counts.

The choreography makes the tail to replay deterministic:
1. worker 1 (durable steps every 300 ms) counts phase 1; the test waits until every record of
   phase 1 is durable and Faust committed every source event; SIGKILL, wipe;
2. worker 2 (durable steps every hour: none) recovers from the DFS, replaying nothing, counts
   phase 2; the test waits until Faust committed every source event; SIGKILL, wipe;
3. worker 3 recovers the phase-1 state from the DFS and replays exactly phase 2's records.
"""

import json
from pathlib import Path

import pytest

from tests.faust.harness import (
    PARTITIONS,
    WordCount,
    durable_offsets,
    recovered_tables,
    recovery_report,
    store_url,
    wait_durable,
    words,
)
from tests.support.fixtures import S3Bucket
from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ManagedProcess, ProcessRunner

SERVICE_LINE = "perform compaction on compaction-service side"


def start_compaction_service(
    runner: ProcessRunner, bucket: S3Bucket, tmp: Path
) -> tuple[ManagedProcess, str]:
    """A `streamlet compaction-service` process allowed into the bucket; and its address."""
    options = tmp / "storage-options.json"
    options.write_text(json.dumps(bucket.storage_options))
    service = runner.python(
        module="streamlet.cli",
        args=[
            "compaction-service", "--port", "0", "--workers", "1", "--allowed-root", bucket.url,
            "--storage-options-file", str(options),
        ],
        name="compaction-service",
    )
    line = service.wait_for_output("compaction service listening on", timeout=60)
    return service, line.split("listening on ", 1)[1].split()[0]


@pytest.mark.parametrize("compaction", ["local", "remote"])
def test_a_new_node_recovers_from_the_dfs_and_replays_only_the_tail(
    compaction: str,
    kafka_broker: KafkaBroker,
    s3_bucket: S3Bucket,
    process_runner: ProcessRunner,
    tmp_path: Path,
) -> None:
    app = WordCount(kafka_broker, process_runner, f"wc-{compaction}-{tmp_path.name[-8:]}",
                    tmp_path / "node")
    app.create_topic()
    options = {}
    if compaction == "remote":
        service, address = start_compaction_service(process_runner, s3_bucket, tmp_path)
        # Two level-0 tables start a compaction: every durable step writes one per partition.
        options = {
            "compaction.mode": "remote",
            "compaction.service.address": address,
            "lsm.l0_compaction_trigger": "2",
        }

    def store(flush_interval: str) -> str:
        return store_url(s3_bucket.path("faust"), s3_bucket.storage_options,
                         **{"flush.interval": flush_interval}, **options)

    # 1. Phase 1, made durable in several steps, then a crash.
    first = app.start(store("300ms"))
    assert recovered_tables(first) == {"counts": {}, "reference": {}}
    for burst in range(3):
        app.produce(words(40, seed=burst))
        wait_durable(first, {p: n - 1 for p, n in app.per_partition().items()})
    if compaction == "remote":
        served = service.wait_for_output(SERVICE_LINE, timeout=45)
        assert s3_bucket.path("faust", app.name, "counts") in served
        assert "invokeCompactionService" in first.output()
    app.wait_committed()
    phase1 = app.per_partition()
    durable = durable_offsets(first)
    assert durable == {p: n - 1 for p, n in phase1.items()}
    app.kill_and_wipe(first)

    # 2. A new node: the whole phase-1 state comes from the DFS, nothing is replayed.
    second = app.start(store("1h"))
    assert recovered_tables(second) == {"counts": app.expected, "reference": app.expected}
    assert recovery_report(second) == {p: (durable[p], 0) for p in range(PARTITIONS)}
    app.produce(words(50, seed=7))
    app.wait_committed()  # Faust flushed the changelog, then committed the source offsets
    assert durable_offsets(second) == {}
    app.kill_and_wipe(second)

    # 3. Another new node: phase 1 from the DFS, and only phase 2's records replayed.
    third = app.start(store("1h"))
    assert recovered_tables(third) == {"counts": app.expected, "reference": app.expected}
    ends = app.changelog_ends()
    written_since = {p: ends[p] - 1 - durable[p] for p in range(PARTITIONS)}
    assert written_since == {p: n - phase1[p] for p, n in app.per_partition().items()}
    report = recovery_report(third)
    for p in range(PARTITIONS):
        opened_at, replayed = report[p]
        assert opened_at == durable[p]
        assert replayed <= written_since[p]
        assert replayed == written_since[p] > 0  # exactly the tail: the counts are exact
