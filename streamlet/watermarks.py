"""Event time: timestamp assignment and watermark generation at the sources.

A `WatermarkStrategy` says how to read a record's event time and how far out of order records may
arrive. Each source subtask runs a `WatermarkGenerator` from it: the watermark is the highest
timestamp seen minus the allowed out-of-orderness minus one, emitted as it advances. With
`with_idleness`, a source subtask that receives nothing for that long is marked idle, so it does
not hold back event time downstream.

>>> strategy = WatermarkStrategy.bounded_out_of_orderness(ms=500, timestamp=lambda r: r["ts"])
>>> generator = strategy.create_generator()
>>> generator.on_event({"ts": 10_000}), generator.on_event({"ts": 9_000})
(10000, 9000)
>>> generator.current_watermark()
9499
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from streamlet.elements import MIN_TIMESTAMP

TimestampAssigner = Callable[[Any], int]


@dataclass(frozen=True)
class WatermarkStrategy:
    """How a source assigns timestamps and generates watermarks."""

    timestamp: TimestampAssigner
    out_of_orderness_ms: int = 0
    idle_timeout_ms: int | None = None

    @classmethod
    def bounded_out_of_orderness(cls, ms: int, timestamp: TimestampAssigner) -> "WatermarkStrategy":
        """Records may arrive up to `ms` milliseconds later than the highest timestamp seen."""
        if ms < 0:
            raise ValueError(f"out-of-orderness must not be negative, got {ms}")
        return cls(timestamp=timestamp, out_of_orderness_ms=ms)

    @classmethod
    def monotonous_timestamps(cls, timestamp: TimestampAssigner) -> "WatermarkStrategy":
        """Timestamps never decrease."""
        return cls(timestamp=timestamp)

    def with_idleness(self, ms: int) -> "WatermarkStrategy":
        """Mark a source subtask idle after `ms` milliseconds without records."""
        if ms <= 0:
            raise ValueError(f"the idle timeout must be positive, got {ms}")
        return replace(self, idle_timeout_ms=ms)

    def create_generator(self) -> "WatermarkGenerator":
        return WatermarkGenerator(self.timestamp, self.out_of_orderness_ms)


class WatermarkGenerator:
    """Tracks the highest timestamp of one source subtask."""

    def __init__(self, timestamp: TimestampAssigner, out_of_orderness_ms: int) -> None:
        self.timestamp = timestamp
        self._lag = out_of_orderness_ms + 1
        self._max_timestamp = MIN_TIMESTAMP + self._lag

    def on_event(self, value: Any) -> int:
        """The record's timestamp (and remember it)."""
        ts = self.timestamp(value)
        if ts > self._max_timestamp:
            self._max_timestamp = ts
        return ts

    def current_watermark(self) -> int:
        return self._max_timestamp - self._lag
