"""Keyed operators: each subtask owns a keyed state backend for its key-group range, plus timers.

`KeyedOperator` is the base: it opens (or restores) the subtask's backend under the scope
`{job}/{uid}/{subtask}`, sets the current key from each record, fires timers as watermarks and
processing time advance, and snapshots the backend (timers included) on checkpoints.
`KeyedProcessOperator` runs a `KeyedProcessFunction` (one whose `process_element` is `async def`
through `streamlet.async_process`); `ReduceOperator` and `AggregateOperator`
keep a rolling value per key and emit it after every record; `StatefulMapOperator` maps each
record with its key's state and keeps the state the function returns. All of them take records a
batch at a time (`process_batch`) and emit what the batch produced as one batch. With
`state.async.enabled`, a keyed operator's batches run through an `AsyncStateAccess`
(`streamlet.async_state`: state read ahead and write stalls awaited off the event loop).

On a restore (`redistribute`), each new subtask gets the snapshots of the old subtasks whose key
groups overlap its own, so state, timers and windows move with their key groups whatever the
parallelism. Before anything runs, the restored snapshots are checked against the state
descriptors the operator declares (`state_descriptors`: its own, and those a
`KeyedProcessFunction` holds as attributes): a state of another type under the same name is a
`StateTypeConflictError` naming the operator and the state. Canonical savepoints
(`statebackend.canonical`) restore into any backend; native snapshots only into their own.

A savepoint writes the subtask's backend into `<savepoint>/<uid>/<subtask>/` (`savepoint`), in the
savepoint's format.
"""

import asyncio
import re
from collections.abc import Callable
from typing import Any

import xxhash

from statebackend import (
    AggregatingStateDescriptor,
    InvalidHandleError,
    KeyGroupRange,
    StateDescriptor,
    StateHandle,
    StateTypeConflictError,
    ValueStateDescriptor,
)
from statebackend.canonical import CANONICAL
from statebackend.dfs import join
from streamlet.async_process import AsyncProcessBatch, AsyncProcessBatches, is_asynchronous
from streamlet.async_state import AsyncStateAccess
from streamlet.config import Configuration
from streamlet.elements import Record, SavepointTarget, Watermark
from streamlet.errors import CheckpointError, OperatorError, StreamletError, describe_record
from streamlet.functions import AggregateFunction, KeyedProcessFunction, OutputTag
from streamlet.operators import Operator, RestoreTarget
from streamlet.outputs import Timestamps
from streamlet.partitioners import KeySelector
from streamlet.timers import TIMERS, TimerService


class KeyedOperator(Operator):
    """Base of operators on keyed streams; `key_selectors[i]` keys input i."""

    def __init__(self, name: str, key_selectors: list[KeySelector]) -> None:
        super().__init__(name)
        self._key_selectors = key_selectors

    def state_descriptors(self) -> list[StateDescriptor]:
        """The states this operator uses (the timers' and its own), checked against a restore."""
        return [TIMERS]

    def redistribute(self, states: list[Any], target: RestoreTarget) -> list[Any]:
        """New subtask i gets `{"backend": [the handles overlapping its key groups]}`."""
        handles = [_handle(state) for state in states]
        _check_key_groups(handles, target.max_parallelism)
        for handle in handles:
            if handle.backend not in (target.backend, CANONICAL):
                raise CheckpointError(
                    f"its state is in the {handle.backend!r} state backend, not in "
                    f"state.backend {target.backend!r}"
                )
            for descriptor in self.state_descriptors():
                meta = handle.states.get(descriptor.name)
                if meta is None:
                    continue
                try:
                    meta.check(descriptor)
                except StateTypeConflictError as e:
                    raise StateTypeConflictError(f"operator '{self.name}': {e}") from None
        shares = []
        for index in range(target.parallelism):
            key_groups = KeyGroupRange.of_subtask(target.max_parallelism, target.parallelism, index)
            shares.append(
                {
                    "backend": [
                        state["backend"]
                        for state, handle in zip(states, handles, strict=True)
                        if handle.key_group_range.intersection(key_groups)
                    ]
                }
            )
        return shares

    async def open(self, state: Any | None) -> None:
        # Opening (restoring) and closing a backend reads and writes its storage: off the loop.
        self.backend = await asyncio.to_thread(
            self.context.create_keyed_backend, None if state is None else state["backend"]
        )
        self.timers = TimerService(self.backend)
        if state is not None:
            await asyncio.to_thread(self.timers.restore)
        config = self.context.config
        self._async_state = (
            AsyncStateAccess.of(
                self.backend,
                self._key_selectors,
                config.get("state.async.max-records"),
                config.get("state.async.max-bytes"),
            )
            if config is not None and config.get("state.async.enabled")
            else None
        )

    def async_state(self) -> AsyncStateAccess | None:
        return self._async_state

    def set_key(self, record: Record, input_index: int) -> Any:
        key = self._key_selectors[input_index](record.value)
        self.backend.set_current_key(key)
        return key

    def process_watermark(self, watermark: Watermark) -> None:
        self.timers.advance_watermark(watermark.timestamp, self._fire_event_timer)
        self.output.watermark_everywhere(watermark)

    def next_processing_timer(self) -> int | None:
        return self.timers.next_processing_time()

    def on_processing_time(self, now_ms: int) -> None:
        self.timers.advance_processing_time(now_ms, self._fire_processing_timer)

    def on_event_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        """An event-time timer fired (the current key is `key`)."""

    def on_processing_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        """A processing-time timer fired (the current key is `key`)."""

    def _fire_event_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        self._guarded(self.on_event_timer, key, namespace, timestamp)

    def _fire_processing_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        self._guarded(self.on_processing_timer, key, namespace, timestamp)

    def _guarded(
        self, handler: Callable[[Any, Any, int], None], key: Any, ns: Any, ts: int
    ) -> None:
        try:
            handler(key, ns, ts)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, f"timer {ts} of key {key!r}", e) from e

    async def snapshot(self, checkpoint_id: int) -> Any | None:
        handle = await asyncio.to_thread(self.backend.snapshot, checkpoint_id)
        return {"backend": handle.to_dict()}

    async def savepoint(self, checkpoint_id: int, target: SavepointTarget) -> Any | None:
        directory = join(
            target.url, _directory_name(self.context.uid), str(self.context.subtask_index)
        )
        handle = await asyncio.to_thread(
            self.backend.savepoint, checkpoint_id, directory, target.format
        )
        return {"backend": handle.to_dict()}

    async def release_checkpoints(self, dropped: list[Any], retained: list[Any]) -> None:
        mine = self.backend.backend_name
        kept = [StateHandle.from_dict(state["backend"]) for state in retained]
        kept = [handle for handle in kept if handle.backend == mine]
        for state in dropped:
            handle = StateHandle.from_dict(state["backend"])
            if handle.backend == mine:
                await asyncio.to_thread(self.backend.release, handle, kept)

    async def close(self) -> None:
        backend = getattr(self, "backend", None)
        if backend is not None:
            await asyncio.to_thread(self.context.release_keyed_backend, backend)
            del self.backend


def _directory_name(uid: str) -> str:
    """A directory name for an operator's uid: the uid itself when it is a plain name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", uid).strip("-.")
    if safe == uid:
        return uid
    return f"{safe or 'operator'}-{xxhash.xxh32_hexdigest(uid.encode())}"


def _handle(state: Any) -> StateHandle:
    if not isinstance(state, dict) or "backend" not in state:
        raise CheckpointError(f"its state is not a keyed state snapshot: {state!r:.100}")
    try:
        return StateHandle.from_dict(state["backend"])
    except InvalidHandleError as e:
        raise CheckpointError(str(e)) from e


def _check_key_groups(handles: list[StateHandle], max_parallelism: int) -> None:
    """The snapshots must hold every key group of `max_parallelism` once (in order)."""
    expected = 0
    for handle in handles:
        if handle.max_parallelism != max_parallelism or handle.key_group_range.start != expected:
            raise CheckpointError(
                f"its snapshots do not hold key groups 0..{max_parallelism - 1} in order: "
                f"{handle.scope} holds {handle.key_group_range.start}.."
                f"{handle.key_group_range.end} of {handle.max_parallelism}"
            )
        expected = handle.key_group_range.end + 1
    if expected != max_parallelism:
        raise CheckpointError(
            f"its snapshots hold key groups 0..{expected - 1}, not 0..{max_parallelism - 1}"
        )


def declared_descriptors(function: object) -> list[StateDescriptor]:
    """The state descriptors `function` holds as class or instance attributes."""
    namespaces = [vars(klass) for klass in reversed(type(function).__mro__)]
    namespaces.append(getattr(function, "__dict__", {}))
    return [
        value
        for namespace in namespaces
        for value in namespace.values()
        if isinstance(value, StateDescriptor)
    ]


class _ProcessContext:
    """The `KeyedContext` a `KeyedProcessFunction` sees. `state(descriptor)` returns the handle
    of the descriptor asked for last at once (most functions use one per record), any other from
    the backend's `get_state`."""

    def __init__(self, operator: "KeyedProcessOperator") -> None:
        self._operator = operator
        self.key: Any = None
        self.timestamp: int | None = None
        self._get_state = operator.backend.get_state
        self._last: tuple[Any, Any] = (None, None)  # (descriptor, its handle)

    def state(self, descriptor: Any) -> Any:
        last, handle = self._last
        if descriptor is last:
            return handle
        handle = self._get_state(descriptor)
        self._last = (descriptor, handle)
        return handle

    @property
    def timers(self) -> TimerService:
        return self._operator.timers

    def output(self, tag: OutputTag, value: Any) -> None:
        self._operator.output.collect_side(tag.name, Record(value, self.timestamp))


class KeyedProcessOperator(KeyedOperator):
    def __init__(
        self, name: str, key_selectors: list[KeySelector], function: KeyedProcessFunction
    ) -> None:
        super().__init__(name, key_selectors)
        self._function = function
        self._asynchronous = is_asynchronous(function)
        self._async_batches: AsyncProcessBatches | None = None

    def state_descriptors(self) -> list[StateDescriptor]:
        return [*super().state_descriptors(), *declared_descriptors(self._function)]

    async def open(self, state: Any | None) -> None:
        await super().open(state)
        self._ctx = _ProcessContext(self)
        if self._asynchronous:
            config = self.context.config or Configuration()
            self._async_batches = AsyncProcessBatches(
                self.name,
                self._function,
                self._key_selectors,
                self.backend,
                self.timers,
                self.output,
                config.get("state.async.max-records"),
            )
        self._function.open(self.context.runtime)

    def async_process_batch(self) -> AsyncProcessBatch | None:
        """With an `async def process_element`: the batches run as `streamlet.async_process`
        says."""
        batches = self._async_batches
        return None if batches is None else batches.process_batch

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        select = self._key_selectors[input_index]
        set_key = self.backend.set_current_key
        process_element = self._function.process_element
        ctx = self._ctx
        results: list[Any] = []
        extend = results.extend
        result_timestamps: Timestamps = None if timestamps is None else []
        try:
            if timestamps is None:
                ctx.timestamp = None
                for value in values:
                    key = select(value)
                    set_key(key)
                    ctx.key = key
                    produced = process_element(value, ctx)
                    if produced is not None:
                        extend(produced)
            else:
                for value, timestamp in zip(values, timestamps, strict=True):
                    key = select(value)
                    set_key(key)
                    ctx.key, ctx.timestamp = key, timestamp
                    produced = process_element(value, ctx)
                    if produced is not None:
                        before = len(results)
                        extend(produced)
                        added = len(results) - before
                        result_timestamps.extend([timestamp] * added)  # type: ignore[union-attr]
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        if results:
            self.output.collect_batch(results, result_timestamps)

    def on_event_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        self._on_timer(key, timestamp, timestamp)

    def on_processing_timer(self, key: Any, namespace: Any, timestamp: int) -> None:
        self._on_timer(key, timestamp, None)

    def _on_timer(self, key: Any, timestamp: int, event_time: int | None) -> None:
        ctx = self._ctx
        ctx.key, ctx.timestamp = key, event_time
        self._emit(self._function.on_timer(timestamp, ctx), event_time)

    def _emit(self, results: Any, timestamp: int | None) -> None:
        if results is not None:
            collect = self.output.collect
            for value in results:
                collect(Record(value, timestamp))


class _OneStateOperator(KeyedOperator):
    """A keyed operator keeping one state per key (`descriptor`), opened with the backend."""

    def __init__(
        self, name: str, key_selectors: list[KeySelector], descriptor: StateDescriptor
    ) -> None:
        super().__init__(name, key_selectors)
        self._descriptor = descriptor

    def state_descriptors(self) -> list[StateDescriptor]:
        return [*super().state_descriptors(), self._descriptor]

    async def open(self, state: Any | None) -> None:
        await super().open(state)
        self._state: Any = self.backend.get_state(self._descriptor)


class ReduceOperator(_OneStateOperator):
    """Emits `reduce(previous, value)` per key after every record."""

    def __init__(
        self, name: str, key_selectors: list[KeySelector], reduce: Callable[[Any, Any], Any]
    ) -> None:
        super().__init__(name, key_selectors, ValueStateDescriptor("reduce"))
        self._reduce = reduce

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        select = self._key_selectors[input_index]
        set_key = self.backend.set_current_key
        state, reduce = self._state, self._reduce
        results: list[Any] = []
        try:
            for value in values:
                set_key(select(value))
                previous = state.value()
                reduced = value if previous is None else reduce(previous, value)
                state.update(reduced)
                results.append(reduced)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        self.output.collect_batch(results, timestamps)


class AggregateOperator(_OneStateOperator):
    """Folds every record into its key's accumulator and emits the current result."""

    def __init__(
        self, name: str, key_selectors: list[KeySelector], aggregate: AggregateFunction
    ) -> None:
        super().__init__(name, key_selectors, AggregatingStateDescriptor("aggregate", aggregate))

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        select = self._key_selectors[input_index]
        set_key = self.backend.set_current_key
        state = self._state
        results: list[Any] = []
        try:
            for value in values:
                set_key(select(value))
                state.add(value)
                results.append(state.get())
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        self.output.collect_batch(results, timestamps)


class StatefulMapOperator(_OneStateOperator):
    """Calls `fn(state, value)` per record with the key's state (None at first), which returns
    `(new_state, result)`: `new_state` becomes the key's state (None removes it), `result` is
    emitted."""

    def __init__(
        self, name: str, key_selectors: list[KeySelector], fn: Callable[[Any, Any], Any]
    ) -> None:
        super().__init__(name, key_selectors, ValueStateDescriptor("stateful-map"))
        self._fn = fn

    def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        select = self._key_selectors[input_index]
        set_key = self.backend.set_current_key
        read, write, fn = self._state.value, self._state.update, self._fn
        results: list[Any] = []
        append = results.append
        try:
            for value in values:
                set_key(select(value))
                state, result = fn(read(), value)
                write(state)
                append(result)
        except StreamletError:
            raise
        except Exception as e:
            raise OperatorError(self.name, describe_record(value), e) from e
        self.output.collect_batch(results, timestamps)

