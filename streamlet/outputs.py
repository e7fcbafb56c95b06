"""Where an operator's records go: the next operator of its chain, or channels to other subtasks.

An `Output` takes records one at a time (`collect`) or as a batch (`collect_batch`: a list of
values and one of timestamps, or None when none has one), watermarks and side-output records.
`ChainedOutput` hands them to the next operator of the same chain directly (no queue, no copy; a
batch as one call); `RecordWriter` partitions records into per-channel runs (`Records`) that the
subtask flushes into bounded channels after each input batch, at most `pipeline.batch-size`
records per channel batch (a barrier always ends a batch); `FanOut` feeds several outputs.
User-code failures in a chained operator are reported as an `OperatorError` naming that operator
and the record.
"""

from typing import TYPE_CHECKING, Any

from streamlet.channels import ChannelSink
from streamlet.elements import Barrier, Element, Record, Records, Watermark
from streamlet.errors import OperatorError, StreamletError, describe_record
from streamlet.partitioners import BroadcastPartitioner, Partitioner

if TYPE_CHECKING:
    from streamlet.operators import Operator

Timestamps = list[int | None] | None
"""The timestamps of a batch of records, one per value; None when no record has one."""


class Output:
    """Receives what an operator emits. `side` maps side-output tag names to their outputs."""

    def __init__(self) -> None:
        self.side: dict[str, Output] = {}

    def collect(self, record: Record) -> None:
        raise NotImplementedError

    def collect_batch(self, values: list[Any], timestamps: Timestamps) -> None:
        """Records in order: `values[i]` at `timestamps[i]`. By default one by one."""
        collect = self.collect
        if timestamps is None:
            for value in values:
                collect(Record(value, None))
        else:
            for value, timestamp in zip(values, timestamps, strict=True):
                collect(Record(value, timestamp))

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

    def collect_batch(self, values: list[Any], timestamps: Timestamps) -> None:
        pass

    def emit_watermark(self, watermark: Watermark) -> None:
        pass


class ChainedOutput(Output):
    """Hands records to the next operator in the chain."""

    def __init__(self, operator: "Operator") -> None:
        super().__init__()
        self._operator = operator
        self._process = operator.process
        self._process_batch = operator.process_batch

    def collect(self, record: Record) -> None:
        try:
            self._process(record, 0)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self._operator.name, describe_record(record.value), e) from e

    def collect_batch(self, values: list[Any], timestamps: Timestamps) -> None:
        self._process_batch(values, timestamps, 0)  # names a failing record itself

    def emit_watermark(self, watermark: Watermark) -> None:
        self._operator.process_watermark(watermark)


class FanOut(Output):
    def __init__(self, outputs: list[Output]) -> None:
        super().__init__()
        self._outputs = outputs

    def collect(self, record: Record) -> None:
        for output in self._outputs:
            output.collect(record)

    def collect_batch(self, values: list[Any], timestamps: Timestamps) -> None:
        for output in self._outputs:
            output.collect_batch(values, timestamps)

    def emit_watermark(self, watermark: Watermark) -> None:
        for output in self._outputs:
            output.emit_watermark(watermark)


class RecordWriter(Output):
    """One edge out of a subtask: a partitioner over the channels to the downstream subtasks.

    Records collect per channel in a run (values, and timestamps once one has a timestamp),
    which becomes a `Records` element when a control element follows or at the flush. `name` is
    the operator that emits into it: a partitioner's failure on a batch (a key selector that
    raises) names it and the record.
    """

    def __init__(
        self, channels: list[ChannelSink], partitioner: Partitioner, batch_size: int, name: str
    ) -> None:
        super().__init__()
        self.name = name
        self._channels = channels
        self._partitioner = partitioner
        self._batch_size = batch_size
        self._open: list[list[Element]] = [[] for _ in channels]
        self._sealed: list[list[list[Element]]] = [[] for _ in channels]
        self._values: list[list[Any]] = [[] for _ in channels]
        self._timestamps: list[list[int | None] | None] = [None for _ in channels]
        self._broadcast = isinstance(partitioner, BroadcastPartitioner)
        self._single = len(channels) == 1

    def collect(self, record: Record) -> None:
        value, timestamp = record.value, record.timestamp
        if self._single:
            self._append(0, value, timestamp)
        elif self._broadcast:
            for index in range(len(self._channels)):
                self._append(index, value, timestamp)
        else:
            self._append(self._partitioner.select(value), value, timestamp)

    def _append(self, index: int, value: Any, timestamp: int | None) -> None:
        values, timestamps = self._values[index], self._timestamps[index]
        if timestamps is None and timestamp is not None:
            timestamps = self._timestamps[index] = [None] * len(values)
        values.append(value)
        if timestamps is not None:
            timestamps.append(timestamp)

    def collect_batch(self, values: list[Any], timestamps: Timestamps) -> None:
        if self._single or self._broadcast:
            for index in range(len(self._channels)):
                self._extend(index, values, timestamps)
            return
        select = self._partitioner.select
        try:
            if timestamps is None and not any(self._timestamps):
                pending = self._values
                for value in values:
                    pending[select(value)].append(value)
            else:
                stamps = [None] * len(values) if timestamps is None else timestamps
                for value, timestamp in zip(values, stamps, strict=True):
                    self._append(select(value), value, timestamp)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e

    def _extend(self, index: int, values: list[Any], timestamps: Timestamps) -> None:
        pending, stamps = self._values[index], self._timestamps[index]
        if stamps is None and timestamps is not None:
            stamps = self._timestamps[index] = [None] * len(pending)
        pending.extend(values)
        if stamps is not None:
            stamps.extend([None] * len(values) if timestamps is None else timestamps)

    def _seal(self, index: int) -> None:
        """End the channel's current run of records (if any) as a `Records` element."""
        values = self._values[index]
        if values:
            self._open[index].append(Records(values, self._timestamps[index]))
            self._values[index] = []
            self._timestamps[index] = None

    def emit_watermark(self, watermark: Watermark) -> None:
        self.broadcast(watermark)

    def broadcast(self, element: Element) -> None:
        """Append a control element to every channel; a barrier ends the current batches."""
        for index in range(len(self._channels)):
            self._seal(index)
            buffer = self._open[index]
            buffer.append(element)
            if type(element) is Barrier:
                self._sealed[index].append(buffer)
                self._open[index] = []

    async def flush(self) -> None:
        size = self._batch_size
        for index, channel in enumerate(self._channels):
            self._seal(index)
            sealed, buffer = self._sealed[index], self._open[index]
            if sealed:
                self._sealed[index] = []
                for batch in sealed:
                    await _put_in_batches(channel, batch, size)
            if buffer:
                self._open[index] = []
                await _put_in_batches(channel, buffer, size)


async def _put_in_batches(channel: ChannelSink, elements: list[Element], size: int) -> None:
    """Put `elements` into `channel` in batches of at most `size` records (runs are split)."""
    if sum(len(e) for e in elements if type(e) is Records) <= size:
        await channel.put(elements)
        return
    batch: list[Element] = []
    room = size
    for element in elements:
        if type(element) is not Records:
            batch.append(element)
            continue
        values, timestamps = element.values, element.timestamps
        start = 0
        while start < len(values):
            end = min(len(values), start + room)
            stamps = None if timestamps is None else timestamps[start:end]
            batch.append(Records(values[start:end], stamps))
            room -= end - start
            start = end
            if room == 0:
                await channel.put(batch)
                batch, room = [], size
    if batch:
        await channel.put(batch)
