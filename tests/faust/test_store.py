"""The streamlet store's contract with Faust, on real Faust workers (Tansu broker, moto S3):
table reads, writes, deletions and iteration; standby replicas and a partition taken over from a
SIGKILLed worker; `reset_state`; the errors bad store options give (in this process: Faust
builds a table's store when the table's data is first used, before any broker is reached); and
that docs/faust.md shows the app these tests run.
"""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.exceptions import ImproperlyConfigured

from tests.faust.harness import (
    PARTITIONS,
    WordCount,
    partition_of,
    recovered_tables,
    recovery_report,
    store_url,
    wait_durable,
    wait_serving,
    words,
)
from tests.support.fixtures import S3Bucket
from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import REPO_ROOT, ProcessRunner


def served_right(
    expected: dict[str, int], actives: list[int]
) -> Callable[[dict[str, Any]], bool]:
    """A `SERVING` check: the worker holds `actives`, iterates exactly their part of `expected`
    (items, keys, values, len) and reads every key of `expected` (its standbys included)."""
    mine = {word: n for word, n in expected.items() if partition_of(word) in actives}

    def check(served: dict[str, Any]) -> bool:
        return (
            served["actives"] == actives
            and served["items"] == mine
            and served["keys"] == sorted(mine)
            and served["values"] == sorted(mine.values())
            and served["len"] == len(mine)
            and served["get"] == expected
        )

    return check


def test_two_workers_serve_the_table_with_standbys_and_one_takes_over_a_killed_ones_partitions(
    kafka_broker: KafkaBroker,
    s3_bucket: S3Bucket,
    process_runner: ProcessRunner,
    tmp_path: Path,
) -> None:
    app = WordCount(kafka_broker, process_runner, f"sb-{tmp_path.name[-8:]}", tmp_path / "node")
    app.create_topic()
    store = store_url(s3_bucket.path("faust"), s3_bucket.storage_options,
                      **{"flush.interval": "300ms"})
    everything = list(range(PARTITIONS))

    # One worker holds every partition: sets, deletions (w3 and w8 counted, then deleted; w3
    # counted again), reads and iteration.
    first = app.start(store, tmp_path / "node-a", standbys=1)
    app.produce(words(60, seed=1, deleted=("w3", "w8")) + ["w3"])
    assert "w8" not in app.expected and app.expected["w3"] == 1
    wait_serving(first, served_right(app.expected, everything), "every count, alone")

    # A second worker joins: each holds one partition active and the other's as a standby, whose
    # keys it reads (and does not iterate).
    second = app.start(store, tmp_path / "node-b", standbys=1)
    app.produce(words(60, seed=2, deleted=("w1",)))
    split = [
        wait_serving(
            worker,
            lambda s: len(s["actives"]) == 1 and s["standbys"] == sorted(set(everything)
                                                                         - set(s["actives"])),
            "one active partition and the other as a standby",
        )["actives"]
        for worker in (first, second)
    ]
    assert sorted(split[0] + split[1]) == everything
    for worker, actives in zip((first, second), split, strict=True):
        wait_serving(worker, served_right(app.expected, actives), f"its share {actives}")

    # SIGKILL the second: the first takes its partition over (from the DFS and the changelog)
    # and serves every count, those written after the kill too.
    second.kill()
    wait_serving(first, served_right(app.expected, everything), "every count after the kill")
    app.produce(words(40, seed=3, deleted=("w5",)))
    wait_serving(first, served_right(app.expected, everything), "every count, and the news")


def test_reset_state_empties_the_tables_databases_so_the_next_worker_replays_everything(
    kafka_broker: KafkaBroker,
    s3_bucket: S3Bucket,
    process_runner: ProcessRunner,
    tmp_path: Path,
) -> None:
    app = WordCount(kafka_broker, process_runner, f"rs-{tmp_path.name[-8:]}", tmp_path / "node")
    app.create_topic()
    store = store_url(s3_bucket.path("faust"), s3_bucket.storage_options,
                      **{"flush.interval": "300ms"})
    first = app.start(store)
    app.produce(words(50, seed=4, deleted=("w2",)))
    wait_durable(first, {p: n - 1 for p, n in app.per_partition().items()})
    app.wait_committed()
    first.kill()

    app.reset(store)

    # The databases on the DFS hold nothing: the new worker replays the whole changelog.
    second = app.start(store)
    assert recovered_tables(second) == {"counts": app.expected, "reference": app.expected}
    assert recovery_report(second) == {p: (None, n) for p, n in app.per_partition().items()}


@pytest.mark.parametrize(
    ("url", "table_options", "conf", "named"),
    [
        ("streamlet://?state.dir=memory://f&cache=1", {}, {}, "option(s) cache unknown"),
        ("streamlet://?state.dir=memory://f", {"lsm.nosuch": "1"}, {}, "'lsm.nosuch'"),
        ("streamlet://?state.dir=memory://f&lsm.block_size=big", {}, {}, "lsm.block_size"),
        ("streamlet://?state.dir=memory://f&flush.interval=soon", {}, {}, "'soon'"),
        ("streamlet://?state.dir=memory://f&compaction.mode=far", {}, {}, "compaction.mode"),
        ("streamlet://", {}, {}, "needs the state.dir option"),
        ("streamlet://?state.dir=relative/dir", {}, {}, "state.dir 'relative/dir' is not a URL"),
        ("streamlet://", {"state.dir": "nosuch://x"}, {}, "state.dir 'nosuch://x': no file"),
        ("streamlet://bucket/faust", {}, {}, "give the DFS location as the state.dir option"),
        (
            "streamlet://?state.dir=memory://f", {}, {"processing_guarantee": "exactly_once"},
            "at_least_once processing guarantee only",
        ),
    ],
)
def test_bad_store_options_are_refused_naming_what_is_wrong(
    url: str, table_options: dict[str, str], conf: dict[str, str], named: str, tmp_path: Path
) -> None:
    # The app's store too: Faust gives a table whose store URL is bare ("streamlet://") the app's.
    app = faust.App("bad-options", broker="kafka://127.0.0.1:1", datadir=str(tmp_path),
                    store=url, **conf)
    table = app.Table("counts", default=int, store=url, options=table_options)
    with pytest.raises(ImproperlyConfigured, match="streamlet store") as raised:
        table.data  # noqa: B018 - Faust builds the store here
    assert named in str(raised.value)


def test_good_store_options_from_the_url_and_the_table_build_the_store(tmp_path: Path) -> None:
    app = faust.App("good-options", broker="kafka://127.0.0.1:1", datadir=str(tmp_path))
    table = app.Table(
        "counts", default=int, store="streamlet://?state.dir=memory://f&flush.interval=2s",
        options={"flush.interval": "750ms", "lsm.l0_compaction_trigger": "3"},
    )
    settings = table.data.settings
    assert (settings.dfs, settings.flush_interval_s, settings.lsm.l0_compaction_trigger) == (
        "memory://f", 0.75, 3
    )


def test_streamlet_environment_variables_give_options_the_url_and_the_table_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMLET_STATE_DIR", "memory://from-env")
    monkeypatch.setenv("STREAMLET_COMPACTION_MODE", "remote")
    monkeypatch.setenv("STREAMLET_COMPACTION_SERVICE_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("STREAMLET_COMPACTION_SERVICE_TOKEN", "from-env")
    monkeypatch.setenv("STREAMLET_CHECKPOINT_INTERVAL", "5s")  # a job's key: not the store's
    # The app's bare store URL takes every option from the environment.
    app = faust.App("env-options", broker="kafka://127.0.0.1:1", datadir=str(tmp_path),
                    store="streamlet://")
    from_env = app.Table("counts", default=int).data.settings
    assert from_env.dfs == "memory://from-env"
    assert from_env.backend_options["compaction_mode"] == "remote"
    assert from_env.backend_options["compaction_service_token"] == "from-env"
    url = "streamlet://?state.dir=memory://from-url&compaction.service.token=from-url"
    table = app.Table("other", default=int, store=url,
                      options={"compaction.service.token": "from-table"})
    overridden = table.data.settings
    assert overridden.dfs == "memory://from-url"
    assert overridden.backend_options["compaction_service_token"] == "from-table"
    assert overridden.backend_options["compaction_service_address"] == "127.0.0.1:1"


def test_the_documented_example_is_the_app_these_tests_run() -> None:
    doc = (REPO_ROOT / "docs" / "faust.md").read_text()
    example = doc.split("## A runnable example", 1)[1]
    listing = re.search(r"^```python\n(.*?)^```$", example, re.M | re.S)
    assert listing is not None, "docs/faust.md shows no example app"
    assert listing.group(1) == (REPO_ROOT / "tests" / "faust" / "wordcount_app.py").read_text()
