"""Joins of two streams: the interval join and the window join.

Interval join (`left.interval_join(right, lower_ms, upper_ms).process(fn)`, both keyed): emits
`fn(l, r)` for every pair with equal keys and `l.ts + lower_ms <= r.ts <= l.ts + upper_ms`, stamped
with the larger timestamp. Each side is buffered in keyed map state (timestamp -> values) until the
watermark passes the last time a partner could arrive; records behind the watermark are dropped.

Window join (`left.join(right).where(k1).equal_to(k2).window(assigner).apply(fn)`): emits
`fn(l, r)` for every pair with equal keys in the same window, when the window fires. It is a
co-group: both sides are tagged, unioned, keyed and windowed, and each fired window is crossed.

>>> from streamlet import Job, TumblingEventTimeWindows, WatermarkStrategy
>>> from streamlet.connectors import CollectionSource, PrintSink
>>> job = Job("doc-join")
>>> by_ts = WatermarkStrategy.monotonous_timestamps(lambda r: r[1])
>>> orders = job.source(CollectionSource([("o1", 100), ("o2", 2500)]), "orders", by_ts)
>>> payments = job.source(CollectionSource([("o1", 400), ("o2", 9000)]), "payments", by_ts)
>>> joined = (
...     orders.join(payments).where(lambda o: o[0]).equal_to(lambda p: p[0])
...     .window(TumblingEventTimeWindows(1000)).apply(lambda o, p: (o[0], p[1] - o[1]))
... )
>>> _ = joined.sink(PrintSink())
>>> _ = job.execute({"checkpoint.dir": "memory://doc-join", "state.dir": "memory://doc-join"})
('o1', 300)
"""

from typing import TYPE_CHECKING, Any

from statebackend import MapStateDescriptor, StateDescriptor
from streamlet.elements import Record
from streamlet.errors import JobDefinitionError
from streamlet.functions import JoinFunction
from streamlet.graph import NodeKind
from streamlet.keyed import KeyedOperator
from streamlet.partitioners import KeySelector
from streamlet.timers import EVENT_TIME
from streamlet.windows import TimeWindow, WindowAssigner

if TYPE_CHECKING:
    from streamlet.api import DataStream, KeyedStream

_BUFFERS = (MapStateDescriptor("left-buffer"), MapStateDescriptor("right-buffer"))


class IntervalJoinOperator(KeyedOperator):
    def __init__(
        self,
        name: str,
        key_selectors: list[KeySelector],
        lower_ms: int,
        upper_ms: int,
        join: JoinFunction,
    ) -> None:
        super().__init__(name, key_selectors)
        # For an element of side s, partners on the other side lie in [ts + lo[s], ts + hi[s]].
        self._lower = (lower_ms, -upper_ms)
        self._upper = (upper_ms, -lower_ms)
        self._join = join

    def state_descriptors(self) -> list[StateDescriptor]:
        return [*super().state_descriptors(), *_BUFFERS]

    async def open(self, state: Any | None) -> None:
        await super().open(state)
        self._buffers = tuple(self.backend.get_state(d) for d in _BUFFERS)

    def process(self, record: Record, input_index: int) -> None:
        timestamp = record.timestamp
        if timestamp is None:
            raise ValueError("an interval join needs timestamps: give the sources watermarks")
        if timestamp < self.timers.current_watermark:
            return
        self.set_key(record, input_index)
        own, other = self._buffers[input_index], self._buffers[1 - input_index]
        low = timestamp + self._lower[input_index]
        high = timestamp + self._upper[input_index]
        collect = self.output.collect
        for other_ts, values in other.items():
            if low <= other_ts <= high:
                for value in values:
                    pair = (record.value, value) if input_index == 0 else (value, record.value)
                    collect(Record(self._join(*pair), max(timestamp, other_ts)))
        own.put(timestamp, [*own.get(timestamp, []), record.value])
        upper = self._upper[input_index]
        cleanup = timestamp + upper if upper > 0 else timestamp
        self.timers.register(EVENT_TIME, cleanup, (input_index, timestamp))

    def on_event_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        side, entry_timestamp = namespace
        self._buffers[side].remove(entry_timestamp)


class IntervalJoin:
    """`left.interval_join(right, lower_ms, upper_ms)`; finish with `.process(fn)`."""

    def __init__(
        self, left: "KeyedStream", right: "KeyedStream", lower_ms: int, upper_ms: int
    ) -> None:
        if lower_ms > upper_ms:
            raise JobDefinitionError(f"interval join: lower {lower_ms} > upper {upper_ms}")
        self._left, self._right = left, right
        self._lower, self._upper = lower_ms, upper_ms

    def process(self, fn: JoinFunction, name: str = "interval-join") -> "DataStream":
        """Emit `fn(left, right)` for every matching pair."""
        from streamlet.api import DataStream

        left, right, lower, upper = self._left, self._right, self._lower, self._upper
        node = left.job.graph.add(
            name,
            NodeKind.OPERATOR,
            left.edges(0) + right.edges(1),
            create_operator=lambda: IntervalJoinOperator(
                name, [left.key, right.key], lower, upper, fn
            ),
        )
        return DataStream(left.job, [(node, None)], node)


class WindowJoin:
    """`left.join(right)`; continue with `.where(key).equal_to(key).window(assigner).apply(fn)`."""

    def __init__(self, left: "DataStream", right: "DataStream") -> None:
        self._left, self._right = left, right
        self._left_key: KeySelector | None = None
        self._right_key: KeySelector | None = None
        self._assigner: WindowAssigner | None = None

    def where(self, key: KeySelector) -> "WindowJoin":
        self._left_key = key
        return self

    def equal_to(self, key: KeySelector) -> "WindowJoin":
        self._right_key = key
        return self

    def window(self, assigner: WindowAssigner) -> "WindowJoin":
        self._assigner = assigner
        return self

    def apply(self, fn: JoinFunction, name: str = "window-join") -> "DataStream":
        left_key, right_key, assigner = self._left_key, self._right_key, self._assigner
        if left_key is None or right_key is None or assigner is None:
            raise JobDefinitionError("a window join needs where(), equal_to() and window()")
        tagged = self._left.map(lambda v: (0, v), name=f"{name}-left").union(
            self._right.map(lambda v: (1, v), name=f"{name}-right")
        )

        def key(tagged_value: tuple[int, Any]) -> Any:
            side, value = tagged_value
            return left_key(value) if side == 0 else right_key(value)

        def cross(key: Any, window: TimeWindow, elements: list[tuple[int, Any]]) -> list[Any]:
            lefts = [value for side, value in elements if side == 0]
            rights = [value for side, value in elements if side == 1]
            return [fn(left, right) for left in lefts for right in rights]

        return tagged.key_by(key).window(assigner).process(cross, name=name)
