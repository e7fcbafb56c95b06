"""Stream elements: what flows through channels between subtasks.

A channel carries batches (lists) of elements. A `Record` is a value with an optional event-time
timestamp (milliseconds), what operators take and emit one at a time; in channels, records travel
as `Records`: a run of consecutive records as one list of values and one of timestamps (or none,
when no record of the run has event time), so that a batch costs no object per record and
operators take it whole (`Operator.process_batch`). A `Watermark` says no record with a
timestamp at or below it follows; a `Barrier` marks checkpoint `checkpoint_id` in the stream (for
a savepoint, it carries where and in which format every subtask writes its state: a
`SavepointTarget`); `EndOfInput` is the last element an upstream subtask sends; `IdleStatus` tells
consumers that an input holds no data for a while (so its watermark must not hold event time
back) or that it is active again.
"""

from dataclasses import dataclass
from typing import Any

MIN_TIMESTAMP = -(2**63)
MAX_TIMESTAMP = 2**63 - 1


class Record:
    """A value and its event-time timestamp (None when the stream has no event time)."""

    __slots__ = ("value", "timestamp")

    def __init__(self, value: Any, timestamp: int | None = None) -> None:
        self.value = value
        self.timestamp = timestamp

    def __repr__(self) -> str:
        return f"Record({self.value!r}, timestamp={self.timestamp})"


class Records:
    """A run of records: `values[i]` has the timestamp `timestamps[i]`, or None when
    `timestamps` is None."""

    __slots__ = ("values", "timestamps")

    def __init__(self, values: list[Any], timestamps: list[int | None] | None = None) -> None:
        self.values = values
        self.timestamps = timestamps

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Records({self.values!r}, timestamps={self.timestamps!r})"


@dataclass(frozen=True, slots=True)
class Watermark:
    timestamp: int


@dataclass(frozen=True, slots=True)
class SavepointTarget:
    """Where a savepoint goes (its directory, any fsspec URL) and its format (`native` or
    `canonical`)."""

    url: str
    format: str


@dataclass(frozen=True, slots=True)
class Barrier:
    checkpoint_id: int
    savepoint: SavepointTarget | None = None


@dataclass(frozen=True, slots=True)
class IdleStatus:
    idle: bool


@dataclass(frozen=True, slots=True)
class EndOfInput:
    pass


END_OF_INPUT = EndOfInput()
Element = Records | Watermark | Barrier | IdleStatus | EndOfInput
