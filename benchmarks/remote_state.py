"""Remote state: a keyed job on the lsm backend whose tables are on object storage, its state
accessed synchronously on the event loop, against asynchronous, batched access
(streamlet.async_state).

Setup: a moto S3 server (from the test support) behind a proxy that delays every read request
(GET, HEAD) by `read_delay_ms` (10 ms: object storage's first-byte latency;
tests.support.delay_proxy), both separate processes. A load job writes `KEYS` keys of
`VALUE_BYTES` random (incompressible) bytes into a `stateful_map`'s state and checkpoints it to
S3; the state on S3 (`state_bytes`) is at least 4x the lsm's block and file caches (`cache_bytes`,
each 256 KiB) and the runtime's state cache (256 KiB). Then the measured job, restored from that
checkpoint each time: a source of uniformly random keys, `key_by`, a `stateful_map` that reads
the key's value and writes it back (read-modify-write), a blackhole sink; parallelism 1, in this
process (one event loop, as a task manager's).

Figures:
- `sync_events_per_s`: records per second with `state.async.enabled: false` (every cache miss
  is a read of S3 on the event loop);
- `async_events_per_s`: the same job with it on (each batch's state read ahead, concurrently,
  in a worker thread); `speedup` (async over sync; target >= 5);
- `heartbeat_p99_ms` (async) and `sync_heartbeat_p99_ms`: the 99th percentile delay of a
  heartbeat due every 10 ms on the job's event loop while the job runs (a heartbeat due while
  the loop is blocked runs when it is free again, and each one due meanwhile counts): how late a
  task manager's heartbeat or its metrics server would be served (target <= 50);
- `exchange_round_trip_p99_ms` (async) and `sync_exchange_round_trip_p99_ms`: the 99th
  percentile round trip of a 1-record message through a data exchange server (the runtime's
  `ExchangeServer`, its framing, token check and pickles) on the job's event loop, echoed back
  to a client with its own loop in another thread, one every 10 ms (target <= 50);
- `read_requests_per_event_sync` / `_async`: the delayed reads the proxy served per record.

The runs take `records_sync` and `records_async` records (the sync run is slow by design).
"""

import asyncio
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from streamlet import Job
from streamlet.cluster.exchange import ExchangeServer, connect, read_message, write_message
from streamlet.connectors import BlackholeSink, CollectionSource, DataGeneratorSource
from streamlet.executor import execute_job
from tests.support.delay_proxy import DelayProxy
from tests.support.s3_server import S3Server

KEYS = 30_000
VALUE_BYTES = 100
CACHE_BYTES = 256 << 10  # the lsm's block cache, its file cache, and the state cache
TICK_S = 0.01
RECORDS = {True: (300, 3000), False: (1000, 10_000)}  # (sync, async) by quick
JOB_NAME = "remote-state"
PROBE_TOKEN = "remote-state-probe"


def _value(key: int) -> bytes:
    return random.Random(key).randbytes(VALUE_BYTES)  # incompressible, as on S3


def _job(source: Any, source_name: str, fn: Any) -> Job:
    job = Job(JOB_NAME)
    (
        job.source(source, name=source_name)
        .key_by(lambda key: key)
        .stateful_map(fn, name="state")
        .uid("state")
        .sink(BlackholeSink(), name="discard")
    )
    return job


def _random_key(index: int, rng: Any) -> int:
    return rng.randrange(KEYS)


def _read_modify_write(value: bytes | None, key: int) -> tuple[bytes | None, int]:
    if value is None:
        raise ValueError(f"key {key} has no state: the load did not write it")
    return value, len(value)


async def _heartbeats(delays: list[float], stop: asyncio.Event) -> None:
    """Heartbeats due every TICK_S on this loop: record how late each one ran (seconds). A loop
    blocked for a while serves every heartbeat due meanwhile late, each counted."""
    loop = asyncio.get_running_loop()
    due = loop.time() + TICK_S
    while not stop.is_set():
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        while due <= now:
            delays.append(now - due)
            due += TICK_S


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: dict) -> None:
    """The exchange server's side of the probe: every message straight back."""
    while True:
        write_message(writer, await read_message(reader))
        await writer.drain()


class _ExchangeProbe:
    """A client on its own loop in a thread that sends a 1-record message to the exchange
    server at `address` every TICK_S, whether or not the answers came (an open loop, so that a
    server blocked for a while delays every message due meanwhile, each counted), and records
    each round trip (seconds) until stopped."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.round_trips: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._probe(),))

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        """Stop and wait for the thread (off this loop, which still answers its last messages)."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 60)

    async def _probe(self) -> None:
        hello = {"kind": "control", "execution": "probe"}
        reader, writer = await connect(self.address, hello, PROBE_TOKEN)
        sent = 0

        async def answers() -> None:
            answered = 0
            while answered < sent or not self._stop.is_set():
                record = await read_message(reader)
                self.round_trips.append(time.perf_counter() - record[0][1])
                answered += 1

        reading = asyncio.create_task(answers())
        try:
            due = time.perf_counter()
            while not self._stop.is_set():
                write_message(writer, [("record", time.perf_counter())])
                sent += 1
                due += TICK_S
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await asyncio.wait_for(reading, 60)
        finally:
            reading.cancel()
            writer.close()


def _p99_ms(samples: list[float]) -> float:
    if len(samples) < 2:
        return max(samples, default=0.0) * 1000
    return statistics.quantiles(samples, n=100)[98] * 1000


async def _measure(config: dict[str, Any], records: int, restore_from: str) -> dict[str, float]:
    source = DataGeneratorSource(_random_key, count=records, seed=records)
    job = _job(source, "random-keys", _read_modify_write)
    exchange = ExchangeServer("127.0.0.1", PROBE_TOKEN)
    exchange.register_control("probe", _echo)
    address = await exchange.start()
    delays: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(_heartbeats(delays, stop))
    probe = _ExchangeProbe(address)
    probe.start()
    try:
        started = time.perf_counter()
        result = await execute_job(  # the state of the load, not its source's position
            job, config, parallelism=1, restore_from=restore_from, allow_non_restored_state=True
        )
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await ticker
        await probe.stop()
        await exchange.stop()
    if result.records_in != records:
        raise RuntimeError(f"the job read {result.records_in} records, not {records}")
    if not probe.round_trips:
        raise RuntimeError("the exchange probe made no round trip")
    return {
        "events_per_s": records / elapsed,
        "heartbeat_p99_ms": _p99_ms(delays),
        "exchange_round_trip_p99_ms": _p99_ms(probe.round_trips),
    }


def _config(bucket: str, storage_options: dict[str, Any], local_dir: Path) -> dict[str, Any]:
    lsm = {
        "lsm.memtable_bytes": 1 << 20,
        "lsm.block_cache_bytes": CACHE_BYTES,
        "lsm.file_cache_bytes": CACHE_BYTES,
    }
    return {
        "state.backend": "lsm",
        "state.dir": f"s3://{bucket}/state",
        "state.local-dir": str(local_dir),
        "state.cache-bytes": CACHE_BYTES,
        "state.options": json.dumps(lsm),
        "checkpoint.dir": f"s3://{bucket}/checkpoints",
        "checkpoint.interval": 0,
        "checkpoint.retained": 10,
        "dfs.storage-options": storage_options,
    }


def run(quick: bool = False, read_delay_ms: float = 10.0) -> dict[str, float | int]:
    records_sync, records_async = RECORDS[quick]
    with tempfile.TemporaryDirectory(prefix="bench-remote-state-") as name:
        workdir = Path(name)
        with (
            S3Server(workdir / "s3-log") as server,
            DelayProxy(server.endpoint_url, read_delay_ms, log_dir=workdir / "proxy") as proxy,
        ):
            bucket = server.create_bucket()
            options = server.storage_options()
            options["client_kwargs"] = {
                **options["client_kwargs"],
                "endpoint_url": proxy.endpoint_url,
            }
            options["config_kwargs"] = {"max_pool_connections": 64}
            config = _config(bucket, options, workdir / "local")
            keys = CollectionSource(range(KEYS))
            load = _job(keys, "all-keys", lambda _, key: (_value(key), None))
            asyncio.run(execute_job(load, config, parallelism=1))
            state_bytes = int(server.filesystem().du(f"{bucket}/state"))
            checkpoint = f"s3://{bucket}/checkpoints/{JOB_NAME}/chk-1"
            figures: dict[str, dict[str, float]] = {}
            reads: dict[str, int] = {}
            for mode, enabled, records in (
                ("sync", False, records_sync),
                ("async", True, records_async),
            ):
                before = proxy.stats()["reads"]
                figures[mode] = asyncio.run(
                    _measure({**config, "state.async.enabled": enabled}, records, checkpoint)
                )
                reads[mode] = proxy.stats()["reads"] - before
    sync, async_ = figures["sync"], figures["async"]
    return {
        "read_delay_ms": read_delay_ms,
        "keys": KEYS,
        "state_bytes": state_bytes,
        "cache_bytes": 2 * CACHE_BYTES,
        "state_over_caches": state_bytes / (2 * CACHE_BYTES),
        "records_sync": records_sync,
        "records_async": records_async,
        "sync_events_per_s": sync["events_per_s"],
        "async_events_per_s": async_["events_per_s"],
        "speedup": async_["events_per_s"] / sync["events_per_s"],
        "heartbeat_p99_ms": async_["heartbeat_p99_ms"],
        "sync_heartbeat_p99_ms": sync["heartbeat_p99_ms"],
        "exchange_round_trip_p99_ms": async_["exchange_round_trip_p99_ms"],
        "sync_exchange_round_trip_p99_ms": sync["exchange_round_trip_p99_ms"],
        "read_requests_per_event_sync": reads["sync"] / records_sync,
        "read_requests_per_event_async": reads["async"] / records_async,
    }
