"""Tests of the test infrastructure itself: real Kafka, real S3 over HTTP, real processes.

Each fixture in `tests.support.fixtures` is exercised with the behaviour later tests rely on,
so a broken environment shows up here first, with a clear failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from pathlib import Path

import fsspec
import pytest
import s3fs
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.delay_proxy import DelayProxy
from tests.support.fixtures import S3Bucket
from tests.support.kafka_broker import KafkaBroker, fast_group_settings, kafka_metadata_brokers
from tests.support.ports import port_is_open
from tests.support.processes import ManagedProcess, ProcessError, ProcessRunner, start_server
from tests.support.s3_server import S3Server

pytestmark = pytest.mark.timeout(60)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- Kafka ---------------------------------------------------------------------------------


async def produce(bootstrap_servers: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    await producer.start()
    try:
        for index, value in enumerate(values):
            await producer.send(topic, value, key=str(index).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def consume_and_commit(
    bootstrap_servers: str, topic: str, group: str, expected: int
) -> tuple[list[bytes], dict[TopicPartition, int]]:
    """Consume `expected` messages in `group`, commit, and return them and the commits."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **fast_group_settings(),
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        next_offsets: dict[TopicPartition, int] = {}
        async with asyncio.timeout(30):
            while len(values) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for partition, messages in batches.items():
                    values.extend(message.value for message in messages if message.value)
                    next_offsets[partition] = messages[-1].offset + 1
        await consumer.commit()
        committed: dict[TopicPartition, int] = {}
        for partition in consumer.assignment():
            offset = await consumer.committed(partition)
            assert offset is not None
            committed[partition] = offset
        # Commits are the consumed positions. (Not end_offsets(): Tansu's ListOffsets answers
        # the last batch's base offset + 1, not the high watermark.)
        for partition, offset in next_offsets.items():
            assert committed[partition] == offset
    finally:
        await consumer.stop()
    return values, committed


@pytest.mark.asyncio
async def test_kafka_group_consumes_all_and_resumes_after_committed_offsets(
    kafka_broker: KafkaBroker,
) -> None:
    topic, group = unique("topic"), unique("group")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()

    first = [f"first-{i}".encode() for i in range(30)]
    await produce(kafka_broker.bootstrap_servers, topic, first)
    consumed, committed = await consume_and_commit(
        kafka_broker.bootstrap_servers, topic, group, expected=len(first)
    )
    assert sorted(consumed) == sorted(first)
    assert {tp.partition for tp in committed} == {0, 1, 2}
    assert sum(committed.values()) == len(first)

    # A second member of the same group must start from the committed offsets.
    second = [f"second-{i}".encode() for i in range(10)]
    await produce(kafka_broker.bootstrap_servers, topic, second)
    resumed, committed_after = await consume_and_commit(
        kafka_broker.bootstrap_servers, topic, group, expected=len(second)
    )
    assert sorted(resumed) == sorted(second)
    assert sum(committed_after.values()) == len(first) + len(second)


@pytest.mark.asyncio
async def test_kafka_broker_advertises_loopback_and_creates_topics(
    kafka_broker: KafkaBroker,
) -> None:
    assert kafka_broker.bootstrap_servers == f"127.0.0.1:{kafka_broker.port}"
    brokers = kafka_metadata_brokers("127.0.0.1", kafka_broker.port)
    assert [(host, port) for _, host, port in brokers] == [("127.0.0.1", kafka_broker.port)]

    topic = unique("cli-topic")
    kafka_broker.create_topic(topic, partitions=2)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == {0, 1}
    finally:
        await producer.stop()


def test_kafka_broker_stop_kills_process_and_removes_its_temp_dir() -> None:
    broker = KafkaBroker().start()
    process, log_dir, port = broker.process, broker.log_dir, broker.port
    assert log_dir is not None and process.log_path.is_file()
    broker.stop()
    assert process.returncode == -signal.SIGKILL
    assert not port_is_open(port)
    assert not log_dir.exists()


# -- S3 ------------------------------------------------------------------------------------


def test_s3_write_range_read_list_delete(s3_bucket: S3Bucket) -> None:
    options = s3_bucket.storage_options
    fs = fsspec.filesystem("s3", **options)
    assert s3_bucket.url == f"s3://{s3_bucket.name}"
    assert fs.ls(s3_bucket.url) == []  # a fresh bucket

    data = bytes(range(256)) * 40
    segment = s3_bucket.path("segments", "0001.bin")
    fs.pipe_file(segment, data)
    with fsspec.open(s3_bucket.path("segments/0002.txt"), "wb", **options) as file:
        file.write(b"hello")

    assert fs.info(segment)["size"] == len(data)
    assert fs.cat_file(segment, start=100, end=200) == data[100:200]
    with fs.open(segment, "rb") as file:
        file.seek(5000)
        assert file.read(16) == data[5000:5016]
    assert sorted(fs.ls(s3_bucket.path("segments"))) == [
        f"{s3_bucket.name}/segments/0001.bin",
        f"{s3_bucket.name}/segments/0002.txt",
    ]

    fs.rm(segment)
    assert not fs.exists(segment)
    # Another client (here: a separate, uncached filesystem) sees the same state.
    assert s3_bucket.filesystem().ls(s3_bucket.path("segments")) == [
        f"{s3_bucket.name}/segments/0002.txt"
    ]


def test_the_delay_proxy_delays_reads_concurrently_and_passes_s3_through(
    s3_bucket: S3Bucket,
) -> None:
    with DelayProxy(s3_bucket.endpoint_url, delay_ms=200) as proxy:
        options = s3_bucket.storage_options
        client = {**options["client_kwargs"], "endpoint_url": proxy.endpoint_url}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **{**options, "client_kwargs": client})
        path = s3_bucket.path("object")
        data = os.urandom(50_000)
        fs.pipe_file(path, data)  # a write: not delayed
        assert proxy.stats()["reads"] == 0
        assert fs.info(path)["size"] == len(data)  # HEAD: its Content-Length passed through
        started = time.monotonic()
        parts = fs.cat_ranges([path] * 8, list(range(0, 8000, 1000)), list(range(10, 8010, 1000)))
        elapsed = time.monotonic() - started
        assert parts == [data[i : i + 10] for i in range(0, 8000, 1000)]
        stats = proxy.stats()
        assert stats["reads"] >= 9 and stats["max_in_flight"] >= 2
        assert elapsed >= 0.2  # delayed (and concurrently: max_in_flight)


def test_s3_buckets_are_unique_and_deleted(s3_server: S3Server) -> None:
    first = s3_server.create_bucket()
    second = s3_server.create_bucket()
    assert first != second
    fs = s3_server.filesystem()
    fs.pipe_file(f"{first}/object", b"x")
    s3_server.delete_bucket(first)
    s3_server.delete_bucket(second)
    assert not fs.exists(first)
    assert not fs.exists(second)


def test_s3_server_stop_clears_cached_filesystems() -> None:
    with S3Server() as server:
        fs = fsspec.filesystem("s3", **server.storage_options())
        fs.mkdir(unique("bucket"))
        assert s3fs.S3FileSystem._cache  # fsspec cached the instance
        process, port, log_dir = server.process, server.port, server.log_dir
        assert log_dir is not None and process.log_path.is_file()
    assert process.returncode == -signal.SIGKILL
    assert not log_dir.exists()
    assert not port_is_open(port)
    assert not s3fs.S3FileSystem._cache


# -- processes -----------------------------------------------------------------------------

SLEEPER = "import time; print('READY', flush=True); time.sleep(600)"


def test_process_sigkill_is_reported_and_reaped(process_runner: ProcessRunner) -> None:
    process = process_runner.python(SLEEPER, name="sleeper")
    assert process.wait_for_output("READY", timeout=30) == "READY"
    assert process.running
    pid = process.pid
    assert pid is not None

    assert process.kill() == -signal.SIGKILL
    assert process.returncode == -9
    assert not process.running
    with pytest.raises(ChildProcessError):  # already reaped: no zombie left behind
        os.waitpid(pid, os.WNOHANG)


def test_process_restart_after_kill_gets_a_fresh_log(
    process_runner: ProcessRunner, tmp_path: Path
) -> None:
    code = (
        "import os, sys, time\n"
        "import tests.support.ports  # the checkout is importable whatever the cwd\n"
        "print('writer', sys.argv[1], os.environ['WRITER_MARK'], os.getcwd(), flush=True)\n"
        "time.sleep(600)\n"
    )
    writer = process_runner.python(
        code, args=["arg1"], env={"WRITER_MARK": "mark1"}, cwd=tmp_path, name="writer"
    )
    line = writer.wait_for_output("writer", timeout=30)
    assert line == f"writer arg1 mark1 {tmp_path}"
    first_log = writer.log_path

    assert writer.kill() == -signal.SIGKILL
    writer.restart()
    assert writer.wait_for_output("writer", timeout=30) == line
    assert writer.log_path != first_log
    assert writer.starts == 2
    assert first_log.read_text().count("writer") == 1
    assert writer.output().count("writer") == 1


def test_process_errors_include_captured_output(process_runner: ProcessRunner) -> None:
    crasher = process_runner.python("print('about to fail'); raise SystemExit(3)")
    with pytest.raises(ProcessError, match="about to fail") as exited:
        crasher.wait_for_output("NEVER PRINTED", timeout=30)
    assert "exited with 3" in str(exited.value)
    assert crasher.returncode == 3

    sleeper = process_runner.python(SLEEPER)
    sleeper.wait_for_output("READY", timeout=30)
    with pytest.raises(ProcessError, match="within 0.5s") as timed_out:
        sleeper.wait_for_output(re.compile(r"NEVER\s+PRINTED"), timeout=0.5)
    assert "READY" in str(timed_out.value)
    assert sleeper.running  # a timeout does not stop the process; teardown does


def test_stop_all_kills_process_groups(tmp_path: Path) -> None:
    runner = ProcessRunner(log_dir=tmp_path)
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}])\n"
        "print('GRANDCHILD', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = runner.python(code)
    try:
        grandchild_pid = int(parent.wait_for_output("GRANDCHILD", timeout=30).split()[1])
        runner.stop_all()
        assert parent.returncode == -signal.SIGKILL
        assert wait_until_gone(grandchild_pid)
    finally:
        runner.stop_all()  # idempotent; cleans up if an assertion above failed


def wait_until_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once `pid` no longer runs (gone, or a zombie waiting for its new parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_python_helper_uses_this_interpreter(process_runner: ProcessRunner) -> None:
    process = process_runner.python("import sys; print('EXE', sys.executable)")
    assert process.wait() == 0
    assert process.wait_for_output("EXE") == f"EXE {sys.executable}"


def test_start_server_retries_on_a_fresh_port_when_the_process_exits(tmp_path: Path) -> None:
    server_code = (
        "import socket, sys, time\n"
        "sock = socket.create_server(('127.0.0.1', int(sys.argv[1])))\n"
        "time.sleep(600)\n"
    )
    launched: list[ManagedProcess] = []

    def launch(port: int) -> ManagedProcess:
        code = "print('port taken'); raise SystemExit(1)" if not launched else server_code
        process = ManagedProcess(
            [sys.executable, "-c", code, str(port)], name=f"server-{port}", log_dir=tmp_path
        )
        launched.append(process.start())
        return process

    def probe(port: int) -> None:
        if not port_is_open(port):
            raise ConnectionError(f"port {port} is closed")

    process, port = start_server(launch, probe, timeout=30)
    try:
        assert len(launched) == 2
        assert launched[0].returncode == 1  # the failed attempt was reaped
        assert process is launched[1] and process.running
        assert port_is_open(port)
    finally:
        process.kill()


def test_child_process_writes_to_s3_with_the_storage_options(
    process_runner: ProcessRunner, s3_bucket: S3Bucket
) -> None:
    code = (
        "import json, os, fsspec\n"
        "options = json.loads(os.environ['S3_OPTIONS'])\n"
        "with fsspec.open(os.environ['S3_PATH'], 'wb', **options) as file:\n"
        "    file.write(b'from the child')\n"
        "print('WRITTEN', flush=True)\n"
    )
    path = s3_bucket.path("child", "object")
    writer = process_runner.python(
        code, env={"S3_OPTIONS": json.dumps(s3_bucket.storage_options), "S3_PATH": path}
    )
    writer.wait_for_output("WRITTEN", timeout=30)
    assert writer.wait() == 0
    assert s3_bucket.filesystem().cat_file(path) == b"from the child"
