"""The job API: `Job` and the streams its methods build (`DataStream`, `KeyedStream`,
`WindowedStream`). Each method adds a node to the job's logical graph; nothing runs until the job
is executed (`job.execute()` here, or `streamlet run job.py`).

>>> from streamlet.connectors import CollectionSource, PrintSink
>>> job = Job("doc-wordcount")
>>> lines = job.source(CollectionSource(["a b", "b c b"]), name="lines")
>>> counts = (
...     lines.flat_map(str.split)
...     .map(lambda word: (word, 1))
...     .key_by(lambda pair: pair[0])
...     .reduce(lambda a, b: (a[0], a[1] + b[1]))
... )
>>> _ = counts.filter(lambda pair: pair[0] == "b").sink(PrintSink())
>>> _ = job.execute({"checkpoint.dir": "memory://doc", "state.dir": "memory://doc"})
('b', 1)
('b', 2)
('b', 3)
"""

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from streamlet.async_process import check_process_function
from streamlet.connectors.base import Sink, Source
from streamlet.errors import JobDefinitionError
from streamlet.executor import JobResult, execute_job
from streamlet.functions import (
    AggregateFunction,
    KeyedProcessFunction,
    OutputTag,
    WindowFunction,
)
from streamlet.graph import Edge, JobGraph, Node, NodeKind
from streamlet.keyed import (
    AggregateOperator,
    KeyedProcessOperator,
    ReduceOperator,
    StatefulMapOperator,
)
from streamlet.operators import FilterOperator, FlatMapOperator, MapOperator, SinkOperator
from streamlet.partitioners import (
    BroadcastPartitioner,
    ForwardPartitioner,
    KeyGroupPartitioner,
    KeySelector,
    Partitioner,
    RebalancePartitioner,
)
from streamlet.watermarks import WatermarkStrategy
from streamlet.windows import (
    AggregatedContents,
    ListedContents,
    ReducedContents,
    WindowAssigner,
    WindowContents,
    WindowOperator,
)

if TYPE_CHECKING:
    from streamlet.config import Configuration
    from streamlet.joins import IntervalJoin, WindowJoin


class Job:
    """A streaming job: add sources with `source()`, transform the streams, end them in sinks."""

    def __init__(self, name: str) -> None:
        if not name or "/" in name:
            raise JobDefinitionError(f"a job name must be non-empty without '/', got {name!r}")
        self.name = name
        self.graph = JobGraph()

    def source(
        self,
        source: Source,
        name: str = "source",
        watermarks: WatermarkStrategy | None = None,
    ) -> "DataStream":
        """A stream read from `source`; `watermarks` gives it event time."""
        node = self.graph.add(name, NodeKind.SOURCE, source=source, watermarks=watermarks)
        return DataStream(self, [(node, None)], node)

    def execute(
        self,
        config: "Configuration | Mapping[str, Any] | None" = None,
        parallelism: int | None = None,
    ) -> JobResult:
        """Run the job in this process until its sources end; see `streamlet.executor`."""
        return asyncio.run(execute_job(self, config, parallelism=parallelism))


class _Stream:
    """What streams share: the job, the outputs read, and the node that set_* methods change."""

    def __init__(
        self,
        job: Job,
        outputs: list[tuple[Node, str | None]],
        node: Node | None,
        partitioner: Partitioner | None = None,
    ) -> None:
        self.job = job
        self._outputs = outputs
        self._node = node
        self._partitioner = partitioner

    def _edges(self, input_index: int = 0) -> list[Edge]:
        chosen = self._partitioner
        return [
            Edge(node, tag, None if chosen is None else chosen.copy(), input_index)
            for node, tag in self._outputs
        ]

    def _single_node(self, what: str) -> Node:
        if self._node is None:
            raise JobDefinitionError(f"{what} applies to one operator, not to a union of streams")
        return self._node


class DataStream(_Stream):
    """A stream of records (values with an optional event-time timestamp)."""

    def _then(
        self, name: str, operator: Callable[[], Any], kind: NodeKind = NodeKind.OPERATOR
    ) -> "DataStream":
        node = self.job.graph.add(name, kind, self._edges(), create_operator=operator)
        return DataStream(self.job, [(node, None)], node)

    def map(self, fn: Callable[[Any], Any], name: str = "map") -> "DataStream":
        return self._then(name, lambda: MapOperator(name, fn))

    def filter(self, predicate: Callable[[Any], Any], name: str = "filter") -> "DataStream":
        return self._then(name, lambda: FilterOperator(name, predicate))

    def flat_map(
        self, fn: Callable[[Any], Iterable[Any] | None], name: str = "flat_map"
    ) -> "DataStream":
        """Each value becomes zero or more values (`fn` returns or yields them)."""
        return self._then(name, lambda: FlatMapOperator(name, fn))

    def key_by(self, key: KeySelector) -> "KeyedStream":
        """Partition by `key(value)`: equal keys reach the same subtask and share keyed state."""
        return KeyedStream(self.job, self._outputs, None, key)

    def union(self, *others: "DataStream") -> "DataStream":
        """The records of this stream and `others`, merged."""
        outputs = [*self._edge_sources(), *(o for s in others for o in s._edge_sources())]
        return DataStream(self.job, outputs, None)

    def _edge_sources(self) -> list[tuple[Node, str | None]]:
        if self._partitioner is not None:
            raise JobDefinitionError("set the partitioning after union(), not before")
        return self._outputs

    def rebalance(self) -> "DataStream":
        """Distribute records round-robin to the next operator's subtasks."""
        return DataStream(self.job, self._outputs, self._node, RebalancePartitioner())

    def broadcast(self) -> "DataStream":
        """Send every record to every subtask of the next operator."""
        return DataStream(self.job, self._outputs, self._node, BroadcastPartitioner())

    def forward(self) -> "DataStream":
        """Subtask i feeds subtask i of the next operator (equal parallelism required)."""
        return DataStream(self.job, self._outputs, self._node, ForwardPartitioner())

    def join(self, other: "DataStream") -> "WindowJoin":
        """A window join: `.where(key).equal_to(key).window(assigner).apply(fn)`."""
        from streamlet.joins import WindowJoin

        return WindowJoin(self, other)

    def get_side_output(self, tag: OutputTag) -> "DataStream":
        node = self._single_node("get_side_output()")
        return DataStream(self.job, [(node, tag.name)], None)

    def sink(self, sink: Sink, name: str = "sink") -> "DataStream":
        """Write the stream to `sink`; returns the sink's node (for set_parallelism, name, uid)."""
        return self._then(name, lambda: SinkOperator(name, sink), NodeKind.SINK)

    def set_parallelism(self, parallelism: int) -> "DataStream":
        self._single_node("set_parallelism()").parallelism = parallelism
        return self

    def name(self, name: str) -> "DataStream":
        self._single_node("name()").name = name
        return self

    def uid(self, uid: str) -> "DataStream":
        """A stable id for this operator's state in checkpoints (keep it when editing the job)."""
        self._single_node("uid()").uid = uid
        return self


class KeyedStream(_Stream):
    """A stream partitioned by key; its operators keep keyed state."""

    def __init__(
        self,
        job: Job,
        outputs: list[tuple[Node, str | None]],
        node: Node | None,
        key: KeySelector,
    ) -> None:
        super().__init__(job, outputs, node, KeyGroupPartitioner(key))
        self.key = key

    def _keyed(self, name: str, operator: Callable[[], Any]) -> DataStream:
        node = self.job.graph.add(name, NodeKind.OPERATOR, self._edges(), create_operator=operator)
        return DataStream(self.job, [(node, None)], node)

    def process(self, function: KeyedProcessFunction, name: str = "process") -> DataStream:
        """Run a `KeyedProcessFunction`: per-key state and timers. Its `process_element` may be
        `async def` (`streamlet.async_process`); what cannot run is refused here."""
        check_process_function(function)
        return self._keyed(name, lambda: KeyedProcessOperator(name, [self.key], function))

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "reduce") -> DataStream:
        """Emit `fn(previous, value)` per key after each record (a rolling reduce)."""
        return self._keyed(name, lambda: ReduceOperator(name, [self.key], fn))

    def aggregate(self, aggregate: AggregateFunction, name: str = "aggregate") -> DataStream:
        """Emit the key's aggregate after each record (a rolling aggregate)."""
        return self._keyed(name, lambda: AggregateOperator(name, [self.key], aggregate))

    def stateful_map(
        self, fn: Callable[[Any, Any], tuple[Any, Any]], name: str = "stateful_map"
    ) -> DataStream:
        """Map each record with its key's state: `fn(state, value)` gets the state (None for a
        key without one) and returns `(new_state, result)`; `new_state` is kept for the key
        (None removes it) and `result` is emitted.

        >>> from streamlet.connectors import CollectionSource, PrintSink
        >>> def count(previous, word):
        ...     total = (previous or 0) + 1
        ...     return total, (word, total)
        >>> job = Job("doc-stateful-map")
        >>> words = job.source(CollectionSource(["a", "b", "a"]))
        >>> _ = words.key_by(lambda word: word).stateful_map(count).sink(PrintSink())
        >>> _ = job.execute({"checkpoint.dir": "memory://doc-sm", "state.dir": "memory://doc-sm"})
        ('a', 1)
        ('b', 1)
        ('a', 2)
        """
        return self._keyed(name, lambda: StatefulMapOperator(name, [self.key], fn))

    def window(self, assigner: WindowAssigner) -> "WindowedStream":
        return WindowedStream(self, assigner)

    def interval_join(self, other: "KeyedStream", lower_ms: int, upper_ms: int) -> "IntervalJoin":
        """Pairs `(left, right)` with equal keys and `left.ts + lower <= right.ts <= left.ts +
        upper`; finish with `.process(fn)`."""
        from streamlet.joins import IntervalJoin

        return IntervalJoin(self, other, lower_ms, upper_ms)

    def edges(self, input_index: int) -> list[Edge]:
        return self._edges(input_index=input_index)


class WindowedStream:
    """A keyed stream cut into windows; finish with `reduce`, `aggregate` or `process`."""

    def __init__(self, keyed: KeyedStream, assigner: WindowAssigner) -> None:
        self._keyed = keyed
        self._assigner = assigner
        self._lateness_ms = 0
        self._late_tag: OutputTag | None = None

    def allowed_lateness(self, ms: int) -> "WindowedStream":
        """Keep windows `ms` after they fired; a late record fires its window again."""
        if ms < 0:
            raise JobDefinitionError(f"allowed lateness must not be negative, got {ms}")
        self._lateness_ms = ms
        return self

    def side_output_late_data(self, tag: OutputTag) -> "WindowedStream":
        """Send records too late for every window to the side output `tag`."""
        self._late_tag = tag
        return self

    def reduce(self, fn: Callable[[Any, Any], Any], name: str = "window-reduce") -> DataStream:
        return self._window(name, ReducedContents(fn))

    def aggregate(self, aggregate: AggregateFunction, name: str = "window-aggregate") -> DataStream:
        return self._window(name, AggregatedContents(aggregate))

    def process(self, fn: WindowFunction, name: str = "window-process") -> DataStream:
        """`fn(key, window, elements)` returns or yields the window's output records."""
        return self._window(name, ListedContents(fn))

    def _window(self, name: str, contents: WindowContents) -> DataStream:
        keyed, assigner, lateness, tag = (
            self._keyed,
            self._assigner,
            self._lateness_ms,
            self._late_tag,
        )
        return keyed._keyed(
            name,
            lambda: WindowOperator(name, [keyed.key], assigner, contents, lateness, tag),
        )
