"""A Faust table's recovery on a new node, and the app's throughput: Faust's rocksdb store against
the streamlet store (docs/faust.md).

For each store, in a Tansu broker and a moto S3 server started for the run (tests/support):

1. `keys` events (full: 1,000,000; quick: 100,000), one per key, are written to a source topic
   of `PARTITIONS` partitions; a Faust worker (this module: `python -m benchmarks.faust_recovery`)
   sets `table[key] = n` for each, on the store under test; `events_per_s_<store>` is its rate
   from the tenth of the events on (the steady state: the worker started, the caches warm);
2. once the group committed every event (and, for streamlet, every partition is durable at the
   changelog's end), the worker is SIGKILLed and its local directory deleted: a new node;
3. a worker is started on it; `recovery_s_<store>` is the time from its start until it serves the
   table: Faust's recovery completed (the worker processes events again) and `SAMPLE` random
   keys read through the table have their values (cold reads: from the DFS for streamlet);
4. then the worker scans the whole table: `scan_s_<store>` is the time the scan takes, and
   every key must have its value (a wrong table fails the run).

rocksdb replays the whole changelog into a new local database; streamlet opens the partitions'
databases on the DFS and replays the records after their durable offsets (none here).
`recovery_speedup` is rocksdb's recovery time over streamlet's (target >= 10 in full mode);
`recovery_with_scan_speedup` the same with the full scan added to both (most of a scan's time is
Faust decoding a million keys and values, the same for both stores) and `throughput_ratio`
streamlet's events/s over rocksdb's (target >= 0.9). Both workers pay the same start-up (imports,
group join, Faust's `stream_recovery_delay` of 3 s), which bounds the speedup from above on a small
table. The machine's load average before and after the run (`load_before`, `load_after`) tells
whether other work skewed the events/s, which are wall-clock rates.
"""

import asyncio
import json
import os
import random
import re
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ManagedProcess, ProcessRunner
from tests.support.s3_server import S3Server

PARTITIONS = 2
TIMEOUT_S = 600.0
STORES = ("rocksdb", "streamlet")
STORE_MODULES = {"rocksdb": "faust.stores.rocksdb", "streamlet": "streamlet_faust.store"}
SEND_BATCH = 5000
SAMPLE = 1000  # keys read to tell that a recovered table serves
WARM_UP = 10  # the first 1/WARM_UP of the events is not timed
DURABLE = re.compile(r"partition (\d+): durable at changelog offset (\d+)")


# --------------------------------------------------------------------------------- the benchmark


def run(quick: bool = False) -> dict[str, float | int]:
    keys = 100_000 if quick else 1_000_000
    # Other work on the machine weighs on the events/s of whichever store runs meanwhile.
    result: dict[str, float | int] = {
        "keys": keys, "partitions": PARTITIONS, "load_before": round(os.getloadavg()[0], 2)
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-faust-recovery-"))
    runner = ProcessRunner(log_dir=workdir / "processes")
    try:
        with KafkaBroker(log_dir=workdir / "kafka") as broker, S3Server(workdir / "s3") as s3:
            bucket = s3.create_bucket()
            for store in STORES:
                rate, recovery, scan = _measure(broker, s3, bucket, runner, workdir, store, keys)
                result[f"events_per_s_{store}"] = round(rate)
                result[f"recovery_s_{store}"] = round(recovery, 3)
                result[f"scan_s_{store}"] = round(scan, 3)
    finally:
        runner.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    result["recovery_speedup"] = round(
        result["recovery_s_rocksdb"] / result["recovery_s_streamlet"], 2
    )
    result["recovery_with_scan_speedup"] = round(
        (result["recovery_s_rocksdb"] + result["scan_s_rocksdb"])
        / (result["recovery_s_streamlet"] + result["scan_s_streamlet"]),
        2,
    )
    result["throughput_ratio"] = round(
        result["events_per_s_streamlet"] / result["events_per_s_rocksdb"], 3
    )
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def _measure(
    broker: KafkaBroker, s3: S3Server, bucket: str, runner: ProcessRunner, workdir: Path,
    store: str, keys: int,
) -> tuple[float, float, float]:
    """The store's steady-state events/s, its recovery time on a new node, and the time a scan
    of the recovered table takes."""
    app_id = f"bench-{store}"
    topic = f"{app_id}-source"
    broker.create_topic(topic, partitions=PARTITIONS)
    per_partition = asyncio.run(_produce(broker.bootstrap_servers, topic, keys))
    datadir = workdir / f"node-{store}"
    env = {
        "BROKER": broker.bootstrap_servers,
        "APP_ID": app_id,
        "TOPIC": topic,
        "DATADIR": str(datadir),
        "KEYS": str(keys),
        "STORE": _store_url(store, f"s3://{bucket}/faust", s3.storage_options()),
    }
    first = runner.python(module="benchmarks.faust_recovery", name=f"{store}-load", env=env)
    line = first.wait_for_output("PROCESSED ", timeout=TIMEOUT_S)
    rate = float(line.split("PROCESSED ", 1)[1].split()[0])
    _wait_committed(broker.bootstrap_servers, app_id, topic, per_partition)
    if store == "streamlet":
        _wait_durable(first, {p: n - 1 for p, n in per_partition.items()})
    first.kill()
    shutil.rmtree(datadir)

    started = time.time()
    second = runner.python(module="benchmarks.faust_recovery", name=f"{store}-recover",
                           env={**env, "VERIFY": "1"})
    line = second.wait_for_output("SERVING ", timeout=TIMEOUT_S)
    served_at, scan = map(float, line.split("SERVING ", 1)[1].split()[:2])
    second.kill()
    return rate, served_at - started, scan


def _store_url(store: str, state_dir: str, storage_options: dict[str, Any]) -> str:
    if store == "rocksdb":
        return "rocksdb://"
    query = {"state.dir": state_dir, "dfs.storage-options": json.dumps(storage_options)}
    return "streamlet://?" + urllib.parse.urlencode(query)


async def _produce(bootstrap_servers: str, topic: str, keys: int) -> dict[int, int]:
    """Write one event per key (its value: the key's number); the events per partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=20)
    await producer.start()
    per_partition = dict.fromkeys(range(PARTITIONS), 0)
    try:
        for start in range(0, keys, SEND_BATCH):
            sent = [
                await producer.send(topic, str(n).encode(), key=_key(n).encode(),
                                    partition=n % PARTITIONS)
                for n in range(start, min(start + SEND_BATCH, keys))
            ]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()
    for n in range(keys):
        per_partition[n % PARTITIONS] += 1
    return per_partition


def _key(n: int) -> str:
    return f"k{n:07d}"


def _wait_committed(
    bootstrap_servers: str, group: str, topic: str, wanted: dict[int, int]
) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while (committed := asyncio.run(_committed(bootstrap_servers, group, topic))) != wanted:
        if time.monotonic() > deadline:
            raise TimeoutError(f"group {group} committed {committed}, not {wanted}")
        time.sleep(0.2)


async def _committed(bootstrap_servers: str, group: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)
        }
    finally:
        await consumer.stop()


def _wait_durable(worker: ManagedProcess, wanted: dict[int, int]) -> None:
    """Wait until the streamlet store logged each partition durable at the wanted offset."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        durable = dict.fromkeys(range(PARTITIONS), -1)
        for partition, offset in DURABLE.findall(worker.output()):
            durable[int(partition)] = max(durable[int(partition)], int(offset))
        if all(durable[p] >= offset for p, offset in wanted.items()):
            return
        if time.monotonic() > deadline or not worker.running:
            raise TimeoutError(worker.describe(f"durable at {durable}, not {wanted}"))
        time.sleep(0.1)


# --------------------------------------------------------------------------------- the worker


def worker() -> None:
    """The Faust worker: `table[key] = n` for each source event; prints `PROCESSED <events/s>`
    once it processed `KEYS` events; with VERIFY set, after its first recovery,
    `SERVING <time.time() when it served> <seconds the scan took>` once a sample of keys and then
    a scan of the whole table found every key with its value (else `WRONG TABLE`)."""
    import logging

    import faust
    from faust.worker import Worker

    from tests.faust.broker_offsets import install

    broker = os.environ["BROKER"]
    install(broker)
    keys = int(os.environ["KEYS"])
    app = faust.App(
        os.environ["APP_ID"],
        broker=f"kafka://{broker}",
        datadir=os.environ["DATADIR"],
        topic_partitions=PARTITIONS,
        web_enabled=False,
        # A quick group (re)join after the SIGKILL; Faust's default commit interval (the
        # streamlet store's default flush.interval).
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.25,
        table_standby_replicas=0,
        # The app's store, not the table's: Faust gives a table whose own store URL has no host,
        # path or query ("rocksdb://") the app's store, by default its memory store.
        store=os.environ["STORE"],
    )
    source = app.topic(os.environ["TOPIC"], key_type=str, value_type=str,
                       partitions=PARTITIONS)
    table = app.Table("values", partitions=PARTITIONS)
    store = type(table.data).__module__
    if store != STORE_MODULES[os.environ["STORE"].split(":", 1)[0]]:
        raise SystemExit(f"the table's store is {store}, not the one under test")
    timing: dict[str, float] = {"events": 0}

    @app.agent(source)
    async def put(stream: faust.StreamT[str]) -> None:
        async for key, value in stream.items():
            table[key] = int(value)
            timing["events"] += 1
            if timing["events"] == keys // WARM_UP:
                timing["warm"] = time.perf_counter()
            elif timing["events"] == keys:
                timed = keys - keys // WARM_UP
                rate = timed / (time.perf_counter() - timing["warm"])
                print(f"PROCESSED {rate:.1f} events/s", flush=True)

    async def serve() -> None:
        if "served" in timing or not os.environ.get("VERIFY"):
            return
        timing["served"] = 1
        sample = random.Random(keys).sample(range(keys), min(SAMPLE, keys))
        wrong = [n for n in sample if table.get(_key(n)) != n]
        served_at = time.time()
        started = time.perf_counter()
        items = dict(table.items())
        scan = time.perf_counter() - started
        wrong += [n for n in range(keys) if items.get(_key(n)) != n]
        if len(items) != keys or wrong:
            print(f"WRONG TABLE: {len(items)} keys, {len(wrong)} missing or wrong", flush=True)
        else:
            print(f"SERVING {served_at:.6f} {scan:.3f}", flush=True)

    table.on_recover(serve)
    store_log = logging.getLogger("streamlet_faust")
    store_log.setLevel(logging.DEBUG)
    store_log.addHandler(logging.StreamHandler())
    store_log.propagate = False
    Worker(app, loglevel="warning").execute_from_commandline()


if __name__ == "__main__":
    worker()
