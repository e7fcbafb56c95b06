"""Where an operator's records go: the next operator of its chain, or channels to other subtasks.

An `Output` takes records, watermarks and side-output records. `ChainedOutput` calls the next
operator of the same chain directly (no queue, no copy); `RecordWriter` partitions records into
per-channel buffers that the subtask flushes into bounded channels after each input batch (a barrier
always ends a batch); `FanOut` feeds several outputs. User-code failures in a chained operator are
reported as an `OperatorError` naming that operator and the record.
"""

from typing import TYPE_CHECKING, Any

from streamlet.channels import ChannelSink
from streamlet.elements import Barrier, Element, Record, Watermark
from streamlet.errors import OperatorError, StreamletError, describe_record
from streamlet.partitioners import BroadcastPartitioner, Partitioner

if TYPE_CHECKING:
    from streamlet.operators import Operator


class Output:
    """Receives what an operator emits. `side` maps side-output tag names to their outputs."""

    def __init__(self) -> None:
        self.side: dict[str, Output] = {}

    def collect(self, record: Record) -> None:
        raise NotImplementedError

    def emit_watermark(self, watermark: Watermark) -> None:
        raise NotImplementedError

    def collect_side(self, tag_name: str, record: Record) -> None:
        output = self.side.get(tag_name)
        if output is not None:
            output.collect(record)

    def watermark_everywhere(self, watermark: Watermark) -> None:
        """Send a watermark to the main output and every side output."""
        self.emit_watermark(watermark)
        for output in self.side.values():
            output.emit_watermark(watermark)


class DiscardingOutput(Output):
    """The output of a sink: nothing follows."""

    def collect(self, record: Record) -> None:
        pass

    def emit_watermark(self, watermark: Watermark) -> None:
        pass


class ChainedOutput(Output):
    """Hands records to the next operator in the chain."""

    def __init__(self, operator: "Operator") -> None:
        super().__init__()
        self._operator = operator
        self._process = operator.process

    def collect(self, record: Record) -> None:
        try:
            self._process(record, 0)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self._operator.name, describe_record(record.value), e) from e

    def emit_watermark(self, watermark: Watermark) -> None:
        self._operator.process_watermark(watermark)


class FanOut(Output):
    def __init__(self, outputs: list[Output]) -> None:
        super().__init__()
        self._outputs = outputs

    def collect(self, record: Record) -> None:
        for output in self._outputs:
            output.collect(record)

    def emit_watermark(self, watermark: Watermark) -> None:
        for output in self._outputs:
            output.emit_watermark(watermark)


class RecordWriter(Output):
    """One edge out of a subtask: a partitioner over the channels to the downstream subtasks."""

    def __init__(
        self, channels: list[ChannelSink], partitioner: Partitioner, batch_size: int
    ) -> None:
        super().__init__()
        self._channels = channels
        self._partitioner = partitioner
        self._batch_size = batch_size
        self._open: list[list[Element]] = [[] for _ in channels]
        self._sealed: list[list[list[Element]]] = [[] for _ in channels]
        self._broadcast = isinstance(partitioner, BroadcastPartitioner)
        self._single = len(channels) == 1

    def collect(self, record: Record) -> None:
        if self._single:
            self._open[0].append(record)
        elif self._broadcast:
            for buffer in self._open:
                buffer.append(record)
        else:
            self._open[self._partitioner.select(record.value)].append(record)

    def emit_watermark(self, watermark: Watermark) -> None:
        self.broadcast(watermark)

    def broadcast(self, element: Element) -> None:
        """Append a control element to every channel; a barrier ends the current batches."""
        for index, buffer in enumerate(self._open):
            buffer.append(element)
            if type(element) is Barrier:
                self._sealed[index].append(buffer)
                self._open[index] = []

    async def flush(self) -> None:
        size = self._batch_size
        for index, channel in enumerate(self._channels):
            sealed, buffer = self._sealed[index], self._open[index]
            if sealed:
                self._sealed[index] = []
                for batch in sealed:
                    await _put_in_batches(channel, batch, size)
            if buffer:
                self._open[index] = []
                await _put_in_batches(channel, buffer, size)


async def _put_in_batches(channel: ChannelSink, elements: list[Any], size: int) -> None:
    if len(elements) <= size:
        await channel.put(elements)
        return
    for start in range(0, len(elements), size):
        await channel.put(elements[start : start + size])
