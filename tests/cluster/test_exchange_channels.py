"""The TCP channels between task managers, in one process: credit-based backpressure, barriers
and the end of input carried in order, the token checked, and a lost producer reported."""

import asyncio

import pytest

from streamlet.cluster.exchange import (
    ExchangeServer,
    PeerLost,
    RemoteInputChannel,
    RemoteOutputChannel,
)
from streamlet.elements import END_OF_INPUT, Barrier, Record

TOKEN = "exchange-token"


async def _pair(
    capacity: int, token: str = TOKEN
) -> tuple[ExchangeServer, RemoteOutputChannel, RemoteInputChannel]:
    server = ExchangeServer("127.0.0.1", TOKEN)
    address = await server.start()
    key = ("exec-1", 0, 0, 1)
    consumer = RemoteInputChannel(capacity)
    consumer.attach(asyncio.Event())
    server.register_input(key, consumer)
    return server, RemoteOutputChannel(address, "exec-1", key, token), consumer


async def _poll(channel: RemoteInputChannel) -> list:
    """The next batch, with records as their values (control elements compare equal)."""
    for _ in range(200):
        batch = channel.poll()
        if batch is not None:
            return [e.value if isinstance(e, Record) else e for e in batch]
        await asyncio.sleep(0.01)
    raise AssertionError("no batch arrived")


async def test_a_full_channel_blocks_the_producer_until_the_consumer_takes_a_batch() -> None:
    server, producer, consumer = await _pair(capacity=2)
    await producer.put([Record(1, None)])
    await producer.put([Record(2, None), Barrier(7)])
    third = asyncio.create_task(producer.put([Record(3, None)]))
    await asyncio.sleep(0.2)
    assert not third.done()  # no credit left: backpressure
    assert await _poll(consumer) == [1]
    await asyncio.wait_for(third, 5)  # the returned credit lets it through
    assert await _poll(consumer) == [2, Barrier(7)]
    assert await _poll(consumer) == [3]
    await producer.put([END_OF_INPUT])
    assert await _poll(consumer) == [END_OF_INPUT]
    await server.stop()


async def test_a_connection_without_the_token_is_refused() -> None:
    server, producer, consumer = await _pair(capacity=2, token="wrong")
    with pytest.raises(PeerLost):
        await asyncio.wait_for(producer.put([Record(1, None)]), 5)
    assert consumer.poll() is None
    await server.stop()


async def test_a_producer_that_goes_away_fails_the_consumer() -> None:
    server, producer, consumer = await _pair(capacity=2)
    await producer.put([Record(1, None)])
    await producer.close()  # gone before the end of input
    assert await _poll(consumer) == [1]
    with pytest.raises(PeerLost, match="went away"):
        await _poll(consumer)
    await server.stop()
