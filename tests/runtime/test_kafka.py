"""The Kafka connectors on the Tansu broker: a `streamlet run` reading a topic is SIGKILLed and run
again, resuming from the offsets in its checkpoint; the sink delivers every record."""

import time
import uuid
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streamlet import Job
from streamlet.connectors import CollectionSource, KafkaSink, KafkaSource
from streamlet.executor import execute_job
from tests.runtime.support import CollectSink, local_config
from tests.runtime.test_faults import committed_updates
from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ProcessRunner

KAFKA_JOB = Path(__file__).parent / "jobs" / "kafka_count.py"


async def produce(servers: str, topic: str, words: list[str]) -> None:
    """One record per request: Tansu reports end offsets right only for single-record batches."""
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    await producer.start()
    try:
        for word in words:
            await producer.send_and_wait(topic, word.encode())
    finally:
        await producer.stop()


async def test_sigkilled_kafka_job_resumes_from_checkpointed_offsets(
    kafka_broker: KafkaBroker, process_runner: ProcessRunner, tmp_path: Path
) -> None:
    topic = f"words-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=3)
    words = [f"w{(i * 7) % 13}" for i in range(1200)]
    await produce(kafka_broker.bootstrap_servers, topic, words[:600])
    output = tmp_path / "out"
    env = {
        "KAFKA_COUNT_SERVERS": kafka_broker.bootstrap_servers,
        "KAFKA_COUNT_TOPIC": topic,
        "KAFKA_COUNT_OUTPUT": str(output),
    }
    args = ["run", str(KAFKA_JOB), "-p", "2", "-v"]  # -v: the checkpoint lines waited for
    for key, value in {
        "checkpoint.dir": (tmp_path / "chk").as_uri(),
        "state.dir": (tmp_path / "state").as_uri(),
        "state.backend": "lsm",
        "state.options": '{"lsm.memtable_bytes": 32768}',
        "checkpoint.interval": "100ms",
    }.items():
        args += ["-D", f"{key}={value}"]

    first = process_runner.python(module="streamlet.cli", args=args, env=env)
    first.wait_for_output("checkpoint 3 completed", timeout=60)
    assert first.kill() == -9
    await produce(kafka_broker.bootstrap_servers, topic, words[600:])
    second = process_runner.python(
        module="streamlet.cli", args=args, env={**env, "KAFKA_COUNT_BOUNDED": "1"}
    )
    assert second.wait(timeout=60) == 0, second.describe("failed")
    assert "restored from checkpoint" in second.output()
    expected = Counter(words)
    updates = committed_updates(output)
    assert {key: sorted(counts) for key, counts in updates.items()} == {
        key: list(range(1, n + 1)) for key, n in expected.items()
    }


async def test_kafka_sink_delivers_every_record(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic = f"out-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=2)
    job = Job("kafka-sink")
    job.source(CollectionSource([f"r{i}" for i in range(300)])).sink(
        KafkaSink(topic, kafka_broker.bootstrap_servers)
    )
    await execute_job(job, local_config(tmp_path), parallelism=2)

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_broker.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    received: list[str] = []
    deadline = time.monotonic() + 60  # bounded: a sink that lost records fails the assertion
    try:
        while len(received) < 300 and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            received += [m.value.decode() for batch in batches.values() for m in batch]
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(f"r{i}" for i in range(300))


async def test_kafka_source_subtasks_split_the_partitions(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = f"in-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(topic, partitions=2)
    await produce(kafka_broker.bootstrap_servers, topic, [f"v{i}" for i in range(50)])
    job = Job("kafka-source")
    sink = CollectSink()
    # Three subtasks, two partitions: one subtask is idle and must not stop the job from ending.
    job.source(KafkaSource(topic, kafka_broker.bootstrap_servers, bounded=True)).sink(sink)
    result = await execute_job(job, local_config(tmp_path), parallelism=3)
    assert sorted(sink.values) == sorted(f"v{i}" for i in range(50))
    assert result.records_in == 50
