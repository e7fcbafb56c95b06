"""Channels and input gates: backpressure, barrier alignment, watermark combination."""

import asyncio
from pathlib import Path

from streamlet import Job
from streamlet.channels import Channel, InputGate
from streamlet.connectors import DataGeneratorSource
from streamlet.elements import (
    END_OF_INPUT,
    Barrier,
    IdleStatus,
    Record,
    Watermark,
)
from streamlet.executor import execute_job
from streamlet.metrics import JobMetrics
from tests.runtime.support import CollectSink, local_config, progress_or_end


async def test_a_full_channel_makes_the_producer_wait_until_the_consumer_reads() -> None:
    channel = Channel(capacity=2)
    await channel.put([Record(1)])
    await channel.put([Record(2)])
    blocked = asyncio.create_task(channel.put([Record(3)]))
    await asyncio.sleep(0)
    assert not blocked.done() and len(channel) == 2
    assert channel.poll()[0].value == 1  # type: ignore[index]
    await blocked
    assert [channel.poll()[0].value for _ in range(2)] == [2, 3]  # type: ignore[index]


async def test_gate_blocks_an_input_after_its_barrier_until_all_inputs_delivered_it() -> None:
    first, second = Channel(4), Channel(4)
    gate = InputGate()
    gate.add(first, 0)
    gate.add(second, 0)
    await first.put([Record("a1"), Barrier(1)])
    await first.put([Record("a2")])
    await second.put([Record("b1")])

    batch, index = await gate.next_batch()
    assert index == 0 and gate.handle(0, batch[-1]) == []  # barrier 1 on input 0: not aligned
    batch, index = await gate.next_batch()
    assert index == 1 and batch[0].value == "b1"  # input 0 is blocked, its a2 waits
    assert await gate.next_batch(timeout=0.01) is None
    await second.put([Barrier(1)])
    batch, index = await gate.next_batch()
    assert gate.handle(index, batch[-1]) == [Barrier(1)]
    batch, index = await gate.next_batch()
    assert index == 0 and batch[0].value == "a2"


async def test_an_ended_input_counts_as_aligned() -> None:
    first, second = Channel(4), Channel(4)
    gate = InputGate()
    gate.add(first, 0)
    gate.add(second, 1)
    assert gate.handle(0, Barrier(7)) == []
    assert gate.handle(1, END_OF_INPUT) == [Barrier(7)]
    assert gate.handle(0, END_OF_INPUT) == [END_OF_INPUT]


def test_watermark_is_the_minimum_of_active_inputs() -> None:
    gate = InputGate()
    for input_index in range(3):
        gate.add(Channel(1), input_index)
    assert gate.handle(0, Watermark(100)) == []
    assert gate.handle(1, Watermark(50)) == []
    assert gate.handle(2, Watermark(70)) == [Watermark(50)]
    assert gate.handle(1, IdleStatus(True)) == [Watermark(70)]
    assert gate.handle(2, END_OF_INPUT) == [Watermark(100)]
    assert gate.handle(0, IdleStatus(True)) == [IdleStatus(True)]
    assert gate.handle(1, Watermark(500)) == []  # idle inputs do not move event time
    assert gate.handle(1, IdleStatus(False)) == [IdleStatus(False), Watermark(500)]


async def test_a_slow_sink_holds_the_source_back(tmp_path: Path) -> None:
    release = asyncio.Event()

    class Slow(CollectSink):
        def create_writer(self, context):
            writer = super().create_writer(context)

            async def drain() -> None:
                await release.wait()

            writer.drain = drain  # type: ignore[method-assign]
            return writer

    job = Job("backpressure")
    sink = Slow()
    job.source(DataGeneratorSource(lambda i, rng: i), name="unbounded").rebalance().sink(sink)
    config = local_config(tmp_path, **{"pipeline.batch-size": 10, "pipeline.channel-capacity": 2})
    metrics = JobMetrics()
    stop = asyncio.Event()
    run = asyncio.create_task(execute_job(job, config, stop=stop, metrics=metrics))
    await progress_or_end(lambda: bool(sink.values), run)
    for _ in range(500):  # let the source run as far as the channels allow
        await asyncio.sleep(0)
    # At most: the batch the sink holds, two in the channel, one the source is trying to put.
    assert sink.values and metrics.records_in <= 40
    release.set()
    stop.set()
    await run
