"""Faust's recovery on the Tansu test broker: end offsets from the high watermark.

Tansu answers ListOffsets(latest) with the last record batch's base offset + 1, not the high
watermark, when that batch holds several records (tests/support/kafka_broker.py). Faust's
recovery reads a changelog partition up to that answer, so on Tansu it would stop before the
partition's last records. `install()` makes Faust's aiokafka driver take end offsets from the high
watermark of a Fetch instead, which Tansu answers right: a consumer of its own reads each
partition from the reported offset - 1 (the last batch) and keeps the high watermark. Only tests
and benchmarks call it; Faust against a Kafka broker needs nothing of the kind.
"""

import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

TIMEOUT_S = 30.0


def install(bootstrap_servers: str) -> None:
    """Patch Faust's driver (in this process) to read end offsets from the high watermark."""

    async def _highwaters(self: faust_aiokafka.AIOKafkaConsumerThread, partitions: Iterable[TP]
                          ) -> Mapping[TP, int]:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        listed = await self._ensure_consumer().end_offsets(tps)
        return await high_watermarks(bootstrap_servers, listed)

    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters


async def high_watermarks(
    bootstrap_servers: str, listed: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """The high watermarks of partitions whose ListOffsets(latest) answers are `listed`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(listed))
        for tp, offset in listed.items():
            consumer.seek(tp, max(offset - 1, 0))
        deadline = time.monotonic() + TIMEOUT_S
        while any(consumer.highwater(tp) is None for tp in listed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark for {sorted(listed)} in {TIMEOUT_S}s")
            await consumer.getmany(*listed, timeout_ms=200)
        return {tp: consumer.highwater(tp) for tp in listed}
    finally:
        await consumer.stop()
