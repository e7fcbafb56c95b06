"""Drives `tests.faust.wordcount_app` workers for the Faust store tests: the source topic, the
worker processes, what they print, and what the broker says about the group and changelogs.

Every wait is bounded (`TIMEOUT_S`); a worker that exits or stays silent fails the wait with its
output (`ManagedProcess.describe`).
"""

import asyncio
import json
import random
import re
import shutil
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.faust.broker_offsets import high_watermarks
from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ManagedProcess, ProcessError, ProcessRunner

TIMEOUT_S = 45.0
PARTITIONS = 2
WORDS = [f"w{i}" for i in range(10)]
DURABLE = re.compile(r"table counts partition (\d+): durable at changelog offset (\d+)")
RECOVERED_FROM = re.compile(
    r"table counts partition (\d+): recovered from the DFS at changelog offset (\w+); "
    r"replayed (\d+) changelog records"
)


def partition_of(word: str) -> int:
    """The source (and changelog) partition of a word, or of a deletion `-<word>`."""
    return WORDS.index(word.removeprefix("-")) % PARTITIONS


def words(n: int, seed: int, deleted: tuple[str, ...] = ()) -> list[str]:
    """`n` random words, then a deletion `-<word>` of each word of `deleted`."""
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(n)] + [f"-{word}" for word in deleted]


def store_url(state_dir: str, storage_options: dict[str, Any], **options: str) -> str:
    query = {
        "state.dir": state_dir,
        "dfs.storage-options": json.dumps(storage_options),
        **options,
    }
    return "streamlet://?" + urllib.parse.urlencode(query)


@dataclass
class WordCount:
    """One app (a consumer group, its changelogs), its source topic and its node's directory;
    `expected` is the word counts the source topic makes, `events` the events per partition."""

    broker: KafkaBroker
    runner: ProcessRunner
    name: str
    datadir: Path
    expected: Counter[str] = field(default_factory=Counter)
    events: Counter[int] = field(default_factory=Counter)
    workers: list[ManagedProcess] = field(default_factory=list)

    @property
    def topic(self) -> str:
        return f"{self.name}-words"

    def create_topic(self) -> None:
        self.broker.create_topic(self.topic, partitions=PARTITIONS)

    def start(self, store: str, datadir: Path | None = None, standbys: int = 0
              ) -> ManagedProcess:
        """Start a worker whose `counts` table is on `store`, in `datadir` (default: the app's
        node directory), with `standbys` standby replicas per table partition."""
        worker = self.runner.python(
            module="tests.faust.wordcount_app",
            name=f"worker{len(self.workers)}",
            env=self._env(store, datadir, standbys),
        )
        self.workers.append(worker)
        return worker

    def reset(self, store: str) -> None:
        """Run the app's `reset` command (every table's `reset_state`) to its end."""
        command = self.runner.python(
            module="tests.faust.wordcount_app", args=["reset"], name="reset",
            env=self._env(store, None, 0),
        )
        if command.wait(timeout=TIMEOUT_S) != 0:
            raise ProcessError(command.describe("reset failed"))

    def _env(self, store: str, datadir: Path | None, standbys: int) -> dict[str, str]:
        return {
            "BROKER": self.broker.bootstrap_servers,
            "APP_ID": self.name,
            "TOPIC": self.topic,
            "PARTITIONS": str(PARTITIONS),
            "DATADIR": str(datadir or self.datadir),
            "STORE": store,
            "STANDBYS": str(standbys),
        }

    def kill_and_wipe(self, worker: ManagedProcess) -> None:
        """SIGKILL the worker and delete its local directory: the next one is a new node."""
        worker.kill()
        shutil.rmtree(self.datadir, ignore_errors=True)

    def produce(self, words: list[str]) -> None:
        """Write the words (or deletions `-<word>`) to the source topic, each to its word's
        partition."""
        asyncio.run(self._produce(words))
        for word in words:
            self.events[partition_of(word)] += 1
            if word.startswith("-"):
                self.expected.pop(word[1:], None)
            else:
                self.expected[word] += 1

    async def _produce(self, words: list[str]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.broker.bootstrap_servers)
        await producer.start()
        try:
            sent = [
                await producer.send(
                    self.topic, json.dumps(w).encode(), key=w.encode(), partition=partition_of(w)
                )
                for w in words
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    def per_partition(self) -> dict[int, int]:
        """Events written per source partition (= changelog records of `counts`)."""
        return {p: self.events[p] for p in range(PARTITIONS)}

    def wait_committed(self) -> None:
        """Wait until the group committed every source event written so far."""
        wanted = self.per_partition()
        deadline = time.monotonic() + TIMEOUT_S
        while (committed := asyncio.run(self._committed())) != wanted:
            if time.monotonic() > deadline:
                raise AssertionError(f"group {self.name} committed {committed}, not {wanted}")
            time.sleep(0.2)

    async def _committed(self) -> dict[int, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.broker.bootstrap_servers, group_id=self.name,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            return {
                p: await consumer.committed(TopicPartition(self.topic, p)) or 0
                for p in range(PARTITIONS)
            }
        finally:
            await consumer.stop()

    def changelog_ends(self) -> dict[int, int]:
        """The high watermark of each partition of the `counts` changelog."""
        return asyncio.run(self._changelog_ends())

    async def _changelog_ends(self) -> dict[int, int]:
        tps = [TopicPartition(f"{self.name}-counts-changelog", p) for p in range(PARTITIONS)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap_servers)
        await consumer.start()
        try:
            listed = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
        ends = await high_watermarks(self.broker.bootstrap_servers, listed)
        return {tp.partition: end for tp, end in ends.items()}


def recovered_tables(worker: ManagedProcess) -> dict[str, dict[str, int]]:
    """Wait for the worker's first `RECOVERED` line of each table; their items."""
    tables = {}
    for table in ("counts", "reference"):
        line = worker.wait_for_output(f"RECOVERED {table} ", timeout=TIMEOUT_S)
        tables[table] = json.loads(line.split(f"RECOVERED {table} ", 1)[1])
    return tables


def wait_serving(
    worker: ManagedProcess, wanted: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Wait for a `SERVING` line of the worker whose fields satisfy `wanted` (`what` describes
    it); that line's fields."""
    deadline = time.monotonic() + TIMEOUT_S
    last: dict[str, Any] = {}
    while True:
        for line in worker.output().splitlines():
            if "SERVING " in line:  # printed, or logged by a Faust worker (which prefixes it)
                last = json.loads(line.split("SERVING ", 1)[1])
                if wanted(last):
                    return last
        if time.monotonic() > deadline or not worker.running:
            raise ProcessError(worker.describe(f"served {last}, never {what}"))
        time.sleep(0.1)


def recovery_report(worker: ManagedProcess) -> dict[int, tuple[int | None, int]]:
    """Per partition of `counts`: the durable offset it was opened at and the records replayed."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        found = RECOVERED_FROM.findall(worker.output())
        if len({int(p) for p, _, _ in found}) == PARTITIONS:
            return {
                int(p): (None if offset == "None" else int(offset), int(replayed))
                for p, offset, replayed in found
            }
        if time.monotonic() > deadline or not worker.running:
            raise ProcessError(worker.describe("did not report the recovery of every partition"))
        time.sleep(0.05)


def durable_offsets(worker: ManagedProcess) -> dict[int, int]:
    """The newest durable offset the worker logged per partition of `counts`."""
    offsets: dict[int, int] = {}
    for p, offset in DURABLE.findall(worker.output()):
        offsets[int(p)] = max(offsets.get(int(p), -1), int(offset))
    return offsets


def wait_durable(worker: ManagedProcess, wanted: dict[int, int]) -> None:
    """Wait until the worker made each partition durable at (at least) the wanted offset."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        got = durable_offsets(worker)
        if all(got.get(p, -1) >= offset for p, offset in wanted.items()):
            return
        if time.monotonic() > deadline or not worker.running:
            raise ProcessError(worker.describe(f"made {got} durable, not {wanted}"))
        time.sleep(0.05)
