"""Event-time windows: assigners (tumbling, sliding, session) and the window operator.

A window is `[start, end)`; it fires once the watermark reaches `end - 1`, emitting records with
that timestamp. Records for a window that fired may still arrive within the allowed lateness: each
fires the window again with the updated contents. Later records are dropped, or sent to the late
data side output. Window contents live in the keyed state backend with the window as namespace
(a reduced value, an aggregate accumulator, or the list of elements for `process`), and the firing
and clean-up times are keyed event-time timers, so both are part of checkpoints.

>>> TumblingEventTimeWindows(1000).assign(2500)
[TimeWindow(start=2000, end=3000)]
>>> SlidingEventTimeWindows(1000, 500).assign(2500)
[TimeWindow(start=2500, end=3500), TimeWindow(start=2000, end=3000)]
>>> EventTimeSessionWindows(300).assign(2500)
[TimeWindow(start=2500, end=2800)]
"""

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from statebackend import ListStateDescriptor, StateDescriptor, ValueStateDescriptor
from streamlet.elements import Record
from streamlet.functions import AggregateFunction, OutputTag, WindowFunction
from streamlet.keyed import KeyedOperator
from streamlet.partitioners import KeySelector
from streamlet.timers import EVENT_TIME


class TimeWindow(NamedTuple):
    start: int
    end: int

    @property
    def max_timestamp(self) -> int:
        return self.end - 1


class WindowAssigner:
    """Puts a timestamp into windows; merging assigners (sessions) merge overlapping windows."""

    merging = False

    def assign(self, timestamp: int) -> list[TimeWindow]:
        raise NotImplementedError


class TumblingEventTimeWindows(WindowAssigner):
    """Fixed-size, non-overlapping windows aligned to the epoch (plus `offset_ms`)."""

    def __init__(self, size_ms: int, offset_ms: int = 0) -> None:
        if size_ms <= 0:
            raise ValueError(f"window size must be positive, got {size_ms}")
        self.size_ms, self.offset_ms = size_ms, offset_ms

    def assign(self, timestamp: int) -> list[TimeWindow]:
        start = timestamp - (timestamp - self.offset_ms) % self.size_ms
        return [TimeWindow(start, start + self.size_ms)]


class SlidingEventTimeWindows(WindowAssigner):
    """Windows of `size_ms` starting every `slide_ms`; a record belongs to size/slide of them."""

    def __init__(self, size_ms: int, slide_ms: int, offset_ms: int = 0) -> None:
        if size_ms <= 0 or slide_ms <= 0:
            raise ValueError(f"size and slide must be positive, got {size_ms} and {slide_ms}")
        self.size_ms, self.slide_ms, self.offset_ms = size_ms, slide_ms, offset_ms

    def assign(self, timestamp: int) -> list[TimeWindow]:
        last_start = timestamp - (timestamp - self.offset_ms) % self.slide_ms
        return [
            TimeWindow(start, start + self.size_ms)
            for start in range(last_start, timestamp - self.size_ms, -self.slide_ms)
        ]


class EventTimeSessionWindows(WindowAssigner):
    """A session per key that ends after a gap of `gap_ms` without records."""

    merging = True

    def __init__(self, gap_ms: int) -> None:
        if gap_ms <= 0:
            raise ValueError(f"session gap must be positive, got {gap_ms}")
        self.gap_ms = gap_ms

    def assign(self, timestamp: int) -> list[TimeWindow]:
        return [TimeWindow(timestamp, timestamp + self.gap_ms)]


class WindowContents:
    """How a window keeps its contents: add a value, merge two windows, produce the output."""

    descriptor: Any

    def add(self, state: Any, value: Any) -> None:
        raise NotImplementedError

    def merge_into(self, state: Any, stored: Any) -> None:
        raise NotImplementedError

    def stored(self, state: Any) -> Any:
        raise NotImplementedError

    def results(self, key: Any, window: TimeWindow, stored: Any) -> Iterable[Any]:
        raise NotImplementedError


class ReducedContents(WindowContents):
    def __init__(self, reduce: Callable[[Any, Any], Any]) -> None:
        self.reduce = reduce
        self.descriptor = ValueStateDescriptor("window-contents")

    def add(self, state: Any, value: Any) -> None:
        current = state.value()
        state.update(value if current is None else self.reduce(current, value))

    def merge_into(self, state: Any, stored: Any) -> None:
        self.add(state, stored)

    def stored(self, state: Any) -> Any:
        return state.value()

    def results(self, key: Any, window: TimeWindow, stored: Any) -> Iterable[Any]:
        return [stored]


class AggregatedContents(WindowContents):
    def __init__(self, aggregate: AggregateFunction) -> None:
        self.aggregate = aggregate
        self.descriptor = ValueStateDescriptor("window-accumulator")

    def add(self, state: Any, value: Any) -> None:
        current = state.value()
        if current is None:
            current = self.aggregate.create_accumulator()
        state.update(self.aggregate.add(value, current))

    def merge_into(self, state: Any, stored: Any) -> None:
        current = state.value()
        state.update(stored if current is None else self.aggregate.merge(current, stored))

    def stored(self, state: Any) -> Any:
        return state.value()

    def results(self, key: Any, window: TimeWindow, stored: Any) -> Iterable[Any]:
        return [self.aggregate.get_result(stored)]


class ListedContents(WindowContents):
    def __init__(self, function: WindowFunction) -> None:
        self.function = function
        self.descriptor = ListStateDescriptor("window-elements")

    def add(self, state: Any, value: Any) -> None:
        state.add(value)

    def merge_into(self, state: Any, stored: Any) -> None:
        state.add_all(stored)

    def stored(self, state: Any) -> Any:
        return state.get() or None

    def results(self, key: Any, window: TimeWindow, stored: Any) -> Iterable[Any]:
        return self.function(key, window, stored) or ()


SESSIONS = ValueStateDescriptor("__sessions__")


class WindowOperator(KeyedOperator):
    def __init__(
        self,
        name: str,
        key_selectors: list[KeySelector],
        assigner: WindowAssigner,
        contents: WindowContents,
        allowed_lateness_ms: int = 0,
        late_data_tag: OutputTag | None = None,
    ) -> None:
        super().__init__(name, key_selectors)
        self._assigner = assigner
        self._contents = contents
        self._lateness = allowed_lateness_ms
        self._late_tag = late_data_tag

    def state_descriptors(self) -> list[StateDescriptor]:
        return [*super().state_descriptors(), self._contents.descriptor, SESSIONS]

    async def open(self, state: Any | None) -> None:
        await super().open(state)
        self._state = self.backend.get_state(self._contents.descriptor)
        self._sessions = self.backend.get_state(SESSIONS)

    def process(self, record: Record, input_index: int) -> None:
        key = self.set_key(record, input_index)
        timestamp = record.timestamp
        if timestamp is None:
            raise ValueError(
                "event-time windows need timestamps: give the source a WatermarkStrategy"
            )
        windows = self._assigner.assign(timestamp)
        if self._assigner.merging:
            windows = [w for w in (self._merge_session(windows[0]),) if w is not None]
        added = False
        for window in windows:
            if self._is_late(window):
                continue
            added = True
            self._state.set_namespace(tuple(window))
            self._contents.add(self._state, record.value)
            if self._lateness:
                self.timers.register(EVENT_TIME, self._cleanup_time(window), tuple(window))
            if window.max_timestamp <= self.timers.current_watermark:
                self._fire(key, window)  # late, within the allowed lateness: fire again now
            else:
                self.timers.register(EVENT_TIME, window.max_timestamp, tuple(window))
        if not added and self._late_tag is not None:
            self.output.collect_side(self._late_tag.name, record)

    def on_event_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        window = TimeWindow(*namespace)
        if timestamp == window.max_timestamp:
            self._fire(key, window)
        if timestamp == self._cleanup_time(window):
            self._clear(window)

    def _is_late(self, window: TimeWindow) -> bool:
        return self._cleanup_time(window) <= self.timers.current_watermark

    def _cleanup_time(self, window: TimeWindow) -> int:
        return window.max_timestamp + self._lateness

    def _fire(self, key: Any, window: TimeWindow) -> None:
        self._state.set_namespace(tuple(window))
        stored = self._contents.stored(self._state)
        if stored is None:
            return
        collect = self.output.collect
        for value in self._contents.results(key, window, stored):
            collect(Record(value, window.max_timestamp))

    def _clear(self, window: TimeWindow) -> None:
        self._state.set_namespace(tuple(window))
        self._state.clear()
        if self._assigner.merging:
            sessions = [s for s in self._sessions.value() or [] if tuple(s) != tuple(window)]
            self._sessions.update(sessions or None)

    def _merge_session(self, window: TimeWindow) -> TimeWindow | None:
        """Merge `window` with the key's overlapping sessions; None if the result is late."""
        sessions = [TimeWindow(*s) for s in self._sessions.value() or []]
        overlapping = [s for s in sessions if s.start <= window.end and window.start <= s.end]
        merged = TimeWindow(
            min([window.start, *(s.start for s in overlapping)]),
            max([window.end, *(s.end for s in overlapping)]),
        )
        if self._is_late(merged):
            return None
        for old in overlapping:
            if old == merged:
                continue
            self._state.set_namespace(tuple(old))
            stored = self._contents.stored(self._state)
            self._state.clear()
            self.timers.delete(EVENT_TIME, old.max_timestamp, tuple(old))
            self.timers.delete(EVENT_TIME, self._cleanup_time(old), tuple(old))
            if stored is not None:
                self._state.set_namespace(tuple(merged))
                self._contents.merge_into(self._state, stored)
        kept = [list(s) for s in sessions if s not in overlapping]
        self._sessions.update([*kept, list(merged)])
        return merged
