"""Kafka: a source whose partitions are assigned to subtasks and whose offsets live in checkpoints,
and an at-least-once sink (aiokafka).

`KafkaSource(topic, bootstrap_servers)`: partition p goes to subtask `p % parallelism`; no consumer
group is used, the offsets of the next records to read are the source's checkpointed position, so a
restore resumes exactly after the last checkpoint (with another parallelism too: each partition's
offset moves to the subtask that reads the partition). Without a position a partition starts at
`start` ("earliest" or "latest"). With `bounded=True` the source reads up to the end offsets it
finds when it starts and then finishes. A subtask without partitions is idle (it does not hold
back watermarks).

`KafkaSink(topic, bootstrap_servers)` sends each record (`serializer(value)`, keyed by `key(value)`
when given); every checkpoint waits until all records sent so far are acknowledged, so after a
restore nothing is lost and records since the checkpoint may be sent twice (at-least-once).

    job.source(KafkaSource("events", "localhost:9092", deserializer=json.loads), name="events")
    stream.sink(KafkaSink("counts", "localhost:9092", serializer=lambda v: json.dumps(v).encode()))
"""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streamlet.connectors.base import Sink, SinkWriter, Source, SourceReader
from streamlet.errors import CheckpointError
from streamlet.functions import RuntimeContext

_POLL_TIMEOUT_MS = 100
_METADATA_ATTEMPTS = 50


def _decode(data: bytes | None) -> Any:
    return None if data is None else data.decode()


def _encode(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class KafkaSource(Source):
    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        *,
        deserializer: Callable[[bytes | None], Any] = _decode,
        start: str = "earliest",
        bounded: bool = False,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', got {start!r}")
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.deserializer = deserializer
        self.start = start
        self.bounded = bounded
        self.consumer_options = dict(consumer_options or {})

    def create_reader(self, context: RuntimeContext) -> SourceReader:
        return _KafkaReader(self, context.subtask_index, context.parallelism)

    def redistribute(self, positions: list[Any], parallelism: int) -> list[Any]:
        """Every partition's offset goes to the new subtask that reads it (p % parallelism)."""
        offsets: dict[int, int] = {}
        for position in positions:
            offsets.update(_offsets(position))
        return [
            {str(p): offset for p, offset in offsets.items() if p % parallelism == index}
            for index in range(parallelism)
        ]


def _offsets(position: Any) -> dict[int, int]:
    try:
        return {int(partition): int(offset) for partition, offset in position.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"not Kafka offsets by partition: {position!r:.100}") from e


class _KafkaReader(SourceReader):
    def __init__(self, source: KafkaSource, subtask: int, parallelism: int) -> None:
        self._source = source
        self._subtask = subtask
        self._parallelism = parallelism
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: dict[int, int] = {}
        self._end_offsets: dict[int, int] | None = None

    async def open(self, position: Any | None) -> None:
        source = self._source
        consumer = AIOKafkaConsumer(
            bootstrap_servers=source.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset=source.start,
            **source.consumer_options,
        )
        self._consumer = consumer
        await consumer.start()
        partitions = await self._partitions(consumer)
        mine = [
            TopicPartition(source.topic, p)
            for p in partitions
            if p % self._parallelism == self._subtask
        ]
        consumer.assign(mine)
        restored = {int(p): int(offset) for p, offset in (position or {}).items()}
        for tp in mine:
            if tp.partition in restored:
                consumer.seek(tp, restored[tp.partition])
            self._offsets[tp.partition] = await consumer.position(tp)
        if source.bounded:
            ends = await consumer.end_offsets(mine) if mine else {}
            self._end_offsets = {tp.partition: offset for tp, offset in ends.items()}

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        topic = self._source.topic
        for _ in range(_METADATA_ATTEMPTS):
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return sorted(partitions)
            await consumer.topics()  # refreshes the cluster metadata
            await asyncio.sleep(0.1)
        raise RuntimeError(f"Kafka topic {topic!r} not found at {self._source.bootstrap_servers}")

    async def read_batch(self, max_records: int) -> list[Any]:
        assert self._consumer is not None
        if not self._offsets:
            await asyncio.sleep(_POLL_TIMEOUT_MS / 1000)
            return []
        fetched = await self._consumer.getmany(
            *self._unfinished(), timeout_ms=_POLL_TIMEOUT_MS, max_records=max_records
        )
        values = []
        deserialize = self._source.deserializer
        for tp, messages in fetched.items():
            end = None if self._end_offsets is None else self._end_offsets[tp.partition]
            for message in messages:
                if end is not None and message.offset >= end:
                    break
                values.append(deserialize(message.value))
                self._offsets[tp.partition] = message.offset + 1
        return values

    def _unfinished(self) -> list[TopicPartition]:
        return [
            TopicPartition(self._source.topic, p)
            for p, offset in self._offsets.items()
            if self._end_offsets is None or offset < self._end_offsets[p]
        ]

    @property
    def finished(self) -> bool:
        return self._end_offsets is not None and not self._unfinished()

    @property
    def has_input(self) -> bool:
        return bool(self._offsets)

    def position(self) -> dict[str, int]:
        return {str(p): offset for p, offset in self._offsets.items()}

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


class KafkaSink(Sink):
    def __init__(
        self,
        topic: str,
        bootstrap_servers: str,
        *,
        serializer: Callable[[Any], bytes] = _encode,
        key: Callable[[Any], bytes | None] | None = None,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.serializer = serializer
        self.key = key
        self.producer_options = dict(producer_options or {})

    def create_writer(self, context: RuntimeContext) -> SinkWriter:
        return _KafkaWriter(self)


class _KafkaWriter(SinkWriter):
    def __init__(self, sink: KafkaSink) -> None:
        self._sink = sink
        self._producer: AIOKafkaProducer | None = None
        self._unsent: list[tuple[bytes | None, bytes]] = []
        self._in_flight: list[asyncio.Future[Any]] = []

    async def open(self, state: Any | None) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._sink.bootstrap_servers, **self._sink.producer_options
        )
        await self._producer.start()

    def write(self, value: Any, timestamp: int | None) -> None:
        key = None if self._sink.key is None else self._sink.key(value)
        self._unsent.append((key, self._sink.serializer(value)))

    async def drain(self) -> None:
        assert self._producer is not None
        unsent, self._unsent = self._unsent, []
        in_flight = []
        for future in self._in_flight:
            if future.done():
                future.result()  # raises if the broker refused the record
            else:
                in_flight.append(future)
        for key, value in unsent:
            in_flight.append(await self._producer.send(self._sink.topic, value, key=key))
        self._in_flight = in_flight

    async def snapshot(self, checkpoint_id: int) -> Any:
        await self.drain()
        in_flight, self._in_flight = self._in_flight, []
        await asyncio.gather(*in_flight)
        return None

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
