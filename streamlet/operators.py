"""Operators: what runs inside a subtask for one node of the job graph.

An `Operator` gets records (synchronously, in order), watermarks and checkpoint calls from its
subtask, and emits to its `Output`. Records come in batches (`process_batch`: the values and
their timestamps, one call per run of records of an input batch) or one at a time (`process`);
an operator implements either, the base class makes the other of it. A batch operator emits its
results as one batch after the input batch, and names the record whose user code failed
(`OperatorError`). This module holds the base class, the context it is opened with, and the
stateless operators (map, filter, flat_map) and the sink operator, all batch operators. Keyed
operators are in `streamlet.keyed`, windows in `streamlet.windows`, joins in `streamlet.joins`.

On a restore, an operator defines how the states its old subtasks snapshot are shared out among
the new subtasks (`redistribute`, given a `RestoreTarget`): the identity at the same parallelism;
keyed operators give each new subtask the snapshots overlapping its key groups, the sink operator
asks its sink.

A savepoint round calls `savepoint` instead of `snapshot`: the same state by default; keyed
operators write their backend into the savepoint's directory (`streamlet.keyed`).
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statebackend import BackendConfig, KeyedStateBackend, KeyGroupRange, create_backend
from statebackend.registry import RestoreSource
from streamlet.connectors.base import Sink, SinkWriter
from streamlet.elements import Record, SavepointTarget, Watermark
from streamlet.errors import CheckpointError, OperatorError, StreamletError, describe_record
from streamlet.functions import RuntimeContext
from streamlet.metrics import JobMetrics
from streamlet.outputs import Output, Timestamps

if TYPE_CHECKING:
    from streamlet.async_process import AsyncProcessBatch
    from streamlet.async_state import AsyncStateAccess
    from streamlet.config import Configuration


@dataclass
class OperatorContext:
    """Who and where an operator instance is, and how it gets keyed state."""

    job_name: str
    operator_name: str
    uid: str
    subtask_index: int
    parallelism: int
    max_parallelism: int
    backend_config: BackendConfig
    metrics: JobMetrics
    config: "Configuration | None" = None

    @property
    def runtime(self) -> RuntimeContext:
        return RuntimeContext(
            self.job_name, self.operator_name, self.subtask_index, self.parallelism, self.config
        )

    @property
    def key_group_range(self) -> KeyGroupRange:
        return KeyGroupRange.of_subtask(self.max_parallelism, self.parallelism, self.subtask_index)

    def create_keyed_backend(
        self, restore: RestoreSource | list[RestoreSource] | None
    ) -> KeyedStateBackend:
        backend = create_backend(
            self.backend_config,
            scope=f"{self.job_name}/{self.uid}/{self.subtask_index}",
            key_group_range=self.key_group_range,
            max_parallelism=self.max_parallelism,
            restore=restore,
        )
        self.metrics.watch(backend, self.uid, self.subtask_index)
        return backend

    def release_keyed_backend(self, backend: KeyedStateBackend) -> None:
        self.metrics.retire(backend)
        backend.dispose()


@dataclass(frozen=True)
class RestoreTarget:
    """What restored state is shared out to: the job's new parallelism of the operator, its
    maximum parallelism (key groups) and its state backend."""

    parallelism: int
    max_parallelism: int
    backend: str


class Operator:
    """Base of all operators; the defaults forward watermarks and keep no state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output: Output

    def setup(self, context: OperatorContext, output: Output) -> None:
        self.context = context
        self.output = output

    def redistribute(self, states: list[Any], target: RestoreTarget) -> list[Any]:
        """The states `target.parallelism` new subtasks open with, from what the old subtasks'
        `snapshot` returned (one per old subtask, in order) in the restored checkpoint.

        The default keeps each state with its subtask; at another parallelism it accepts only
        operators that keep no state (every state None).
        """
        if len(states) == target.parallelism:
            return list(states)
        if any(state is not None for state in states):
            raise CheckpointError(
                f"{type(self).__name__} cannot be restored with another parallelism "
                f"({len(states)} -> {target.parallelism}): it keeps state it does not redistribute"
            )
        return [None] * target.parallelism

    async def open(self, state: Any | None) -> None:
        """Prepare to run; `state` is this subtask's share (`redistribute`) of what `snapshot`
        returned in the restored checkpoint, None on a fresh start."""

    def process(self, record: Record, input_index: int) -> None:
        """One record; by default a batch of one (`process_batch`). Override one of the two."""
        timestamps = None if record.timestamp is None else [record.timestamp]
        self.process_batch([record.value], timestamps, input_index)

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        """Records in order: `values[i]` at `timestamps[i]` (None: no timestamps). By default
        one by one through `process`, a failure naming this operator and the record."""
        process = self.process
        try:
            if timestamps is None:
                for value in values:
                    process(Record(value, None), input_index)
            else:
                for value, timestamp in zip(values, timestamps, strict=True):
                    process(Record(value, timestamp), input_index)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e

    def async_process_batch(self) -> "AsyncProcessBatch | None":
        """What the subtask awaits for each run of records instead of calling `process_batch`
        when this operator heads its chain and its user code is `async def`
        (`streamlet.async_process`); None: `process_batch`."""
        return None

    def async_state(self) -> "AsyncStateAccess | None":
        """How the subtask runs this operator's input batches when it heads its chain: after
        awaiting its keyed state (`streamlet.async_state`); None: as they come."""
        return None

    def process_watermark(self, watermark: Watermark) -> None:
        self.output.watermark_everywhere(watermark)

    def next_processing_timer(self) -> int | None:
        """The earliest processing-time timer (epoch ms), if any."""
        return None

    def on_processing_time(self, now_ms: int) -> None:
        """Fire the processing-time timers due at `now_ms`."""

    async def drain(self) -> None:
        """Called after each input batch."""

    async def snapshot(self, checkpoint_id: int) -> Any | None:
        return None

    async def savepoint(self, checkpoint_id: int, target: SavepointTarget) -> Any | None:
        """This operator's state in savepoint `checkpoint_id`: by default its `snapshot`; state
        kept in files goes into `target.url` instead (a directory the user owns)."""
        return await self.snapshot(checkpoint_id)

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        pass

    async def release_checkpoints(self, dropped: list[Any], retained: list[Any]) -> None:
        """Give up this operator's state in checkpoints that are no longer retained.

        `dropped` and `retained` hold what `snapshot` returned in those checkpoints.
        """

    async def close(self) -> None:
        pass


class MapOperator(Operator):
    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self._fn = fn

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        fn = self._fn
        results: list[Any] = []
        append = results.append
        try:
            for value in values:
                append(fn(value))
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        self.output.collect_batch(results, timestamps)


class FilterOperator(Operator):
    def __init__(self, name: str, predicate: Callable[[Any], Any]) -> None:
        super().__init__(name)
        self._predicate = predicate

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        predicate = self._predicate
        kept: list[Any] = []
        kept_timestamps: Timestamps = None if timestamps is None else []
        try:
            if timestamps is None:
                for value in values:
                    if predicate(value):
                        kept.append(value)
            else:
                for value, timestamp in zip(values, timestamps, strict=True):
                    if predicate(value):
                        kept.append(value)
                        kept_timestamps.append(timestamp)  # type: ignore[union-attr]
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        if kept:
            self.output.collect_batch(kept, kept_timestamps)


class FlatMapOperator(Operator):
    def __init__(self, name: str, fn: Callable[[Any], Iterable[Any] | None]) -> None:
        super().__init__(name)
        self._fn = fn

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        fn = self._fn
        results: list[Any] = []
        result_timestamps: Timestamps = None if timestamps is None else []
        try:
            if timestamps is None:
                for value in values:
                    produced = fn(value)
                    if produced is not None:
                        results.extend(produced)
            else:
                for value, timestamp in zip(values, timestamps, strict=True):
                    produced = fn(value)
                    if produced is not None:
                        before = len(results)
                        results.extend(produced)
                        added = len(results) - before
                        result_timestamps.extend([timestamp] * added)  # type: ignore[union-attr]
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        if results:
            self.output.collect_batch(results, result_timestamps)


class SinkOperator(Operator):
    def __init__(self, name: str, sink: Sink) -> None:
        super().__init__(name)
        self._sink = sink
        self._writer: SinkWriter | None = None

    def redistribute(self, states: list[Any], target: RestoreTarget) -> list[Any]:
        return self._sink.redistribute(states, target.parallelism)

    async def open(self, state: Any | None) -> None:
        self._writer = self._sink.create_writer(self.context.runtime)
        await self._writer.open(state)

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        write = self._writer.write  # type: ignore[union-attr]
        try:
            if timestamps is None:
                for value in values:
                    write(value, None)
            else:
                for value, timestamp in zip(values, timestamps, strict=True):
                    write(value, timestamp)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        self.context.metrics.records_out += len(values)

    async def drain(self) -> None:
        await self._writer.drain()  # type: ignore[union-attr]

    async def snapshot(self, checkpoint_id: int) -> Any | None:
        return await self._writer.snapshot(checkpoint_id)  # type: ignore[union-attr]

    async def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        await self._writer.notify_checkpoint_complete(checkpoint_id)  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
