"""Channels between subtasks and the input gate that merges them.

A `Channel` is a bounded FIFO of element batches from one upstream subtask to one downstream
subtask: `put` waits while it is full, which is how backpressure travels upstream. An upstream
subtask always ends a batch right after a `Barrier`, so a barrier is the last element of its batch.

An `InputGate` is the input side of one subtask: it reads batches round-robin from its channels,
combines watermarks (the minimum over inputs that are neither idle nor ended), aligns checkpoint
barriers (a channel that delivered barrier n is not read again until every input delivered it),
and reports the end of input once every channel ended.
"""

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from streamlet.elements import (
    END_OF_INPUT,
    MIN_TIMESTAMP,
    Barrier,
    Element,
    EndOfInput,
    IdleStatus,
    Watermark,
)

Batch = list[Element]


class ChannelSink(Protocol):
    """The producer's end of a channel: a local `Channel`, or one to another process."""

    async def put(self, batch: Batch) -> None: ...


class Channel:
    """A bounded queue of batches with one producer and one consumer (an `InputGate`)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"channel capacity must be at least 1, got {capacity}")
        self._batches: deque[Batch] = deque()
        self._capacity = capacity
        self._space = asyncio.Event()
        self._space.set()
        self._data_signal: asyncio.Event | None = None

    def attach(self, data_signal: asyncio.Event) -> None:
        """Set the event the channel sets whenever a batch arrives (the consumer's gate)."""
        self._data_signal = data_signal

    async def put(self, batch: Batch) -> None:
        while len(self._batches) >= self._capacity:
            self._space.clear()
            await self._space.wait()
        self._batches.append(batch)
        if self._data_signal is not None:
            self._data_signal.set()

    def offer(self, batch: Batch) -> None:
        """Append without waiting: for a producer that knows there is room (network credits)."""
        self._batches.append(batch)
        if self._data_signal is not None:
            self._data_signal.set()

    def poll(self) -> Batch | None:
        if not self._batches:
            return None
        self._space.set()
        return self._batches.popleft()

    def __len__(self) -> int:
        return len(self._batches)


@dataclass
class _InputState:
    channel: Channel
    input_index: int
    watermark: int = MIN_TIMESTAMP
    idle: bool = False
    ended: bool = False
    blocked: bool = False


class InputGate:
    """Merges the channels into one subtask; `input_index` tells two-input operators apart."""

    def __init__(self) -> None:
        self.inputs: list[_InputState] = []
        self._signal = asyncio.Event()
        self._next = 0
        self._watermark = MIN_TIMESTAMP
        self._idle = False
        self._aligning: Barrier | None = None

    def add(self, channel: Channel, input_index: int) -> None:
        channel.attach(self._signal)
        self.inputs.append(_InputState(channel, input_index))

    async def next_batch(self, timeout: float | None = None) -> tuple[Batch, int] | None:
        """The next batch and the index of its channel; None if `timeout` seconds pass first."""
        inputs = self.inputs
        count = len(inputs)
        while True:
            self._signal.clear()
            for offset in range(count):
                index = (self._next + offset) % count
                state = inputs[index]
                if state.blocked or state.ended:
                    continue
                batch = state.channel.poll()
                if batch is not None:
                    self._next = (index + 1) % count
                    return batch, index
            try:
                await asyncio.wait_for(self._signal.wait(), timeout)
            except TimeoutError:
                return None

    def input_index(self, channel_index: int) -> int:
        return self.inputs[channel_index].input_index

    def handle(self, channel_index: int, element: Element) -> list[Element]:
        """Account for a control element; return what the subtask's operators must see."""
        state = self.inputs[channel_index]
        if type(element) is Watermark:
            state.watermark = max(state.watermark, element.timestamp)
            return self._advance_watermark()
        if type(element) is Barrier:
            return self._on_barrier(state, element)
        if type(element) is IdleStatus:
            state.idle = element.idle
            return self._status_change() + self._advance_watermark()
        if isinstance(element, EndOfInput):
            state.ended = True
            events = self._aligned_barrier() + self._advance_watermark()
            if all(s.ended for s in self.inputs):
                events.append(END_OF_INPUT)
            return events
        raise TypeError(f"unexpected stream element {element!r}")

    def _advance_watermark(self) -> list[Element]:
        active = [s.watermark for s in self.inputs if not s.idle and not s.ended]
        if not active:
            return []
        combined = min(active)
        if combined <= self._watermark:
            return []
        self._watermark = combined
        return [Watermark(combined)]

    def _status_change(self) -> list[Element]:
        idle = all(s.idle or s.ended for s in self.inputs)
        if idle == self._idle:
            return []
        self._idle = idle
        return [IdleStatus(idle)]

    def _on_barrier(self, state: _InputState, barrier: Barrier) -> list[Element]:
        if self._aligning is None:
            self._aligning = barrier
        elif barrier.checkpoint_id != self._aligning.checkpoint_id:
            raise RuntimeError(
                f"barrier {barrier.checkpoint_id} arrived while aligning "
                f"checkpoint {self._aligning.checkpoint_id}"
            )
        state.blocked = True
        return self._aligned_barrier()

    def _aligned_barrier(self) -> list[Element]:
        """The barrier being aligned (with its savepoint target), once every input delivered it."""
        if self._aligning is None or not all(s.blocked or s.ended for s in self.inputs):
            return []
        barrier, self._aligning = self._aligning, None
        for s in self.inputs:
            s.blocked = False
        return [barrier]
