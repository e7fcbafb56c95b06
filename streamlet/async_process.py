"""Asynchronous process functions: a `KeyedProcessFunction` whose `process_element` is `async def`.

This module owns what makes such a function run: telling it apart from a synchronous one (and
refusing what cannot run: an async generator, an `async def on_timer`), and running the records
of a batch concurrently with the state of each record's key.

A batch runs in parts of at most `state.async.max-records` records (the records in flight). The
records of a part run as concurrent coroutines, one task per key: the records of one key one
after the other in arrival order (a record starts when the one before it of its key finished),
those of different keys overlapping while they await (the user's own I/O). The part ends when
every record has finished; only then does the subtask take the next part, batch, watermark,
timer or barrier, so these see the effects of every record before them and nothing is in flight
across a checkpoint. The part's outputs (and side outputs) are emitted in input order, each
record's with its timestamp: the results are those of the synchronous function.

The state backend has one current key. Each record's coroutine is driven through `_Keyed`,
which makes its key current before every step of it (every `send` or `throw`): a step runs
synchronously on the event loop, so the state handles and timers it uses see its own key. Each
record has a context of its own (`ctx.key`, `ctx.timestamp`, side outputs held until the part's
outputs are emitted). State is used from the function's own coroutine (and the coroutines it
awaits directly), not from tasks it starts (`asyncio.create_task`, and `asyncio.gather` or,
before Python 3.12, `asyncio.wait_for` of a coroutine): those run outside `_Keyed`, with whichever
key is current.

A record that raises fails the operator with an `OperatorError` naming it; the part's other
records are cancelled and awaited first.
"""

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from streamlet.elements import Record
from streamlet.errors import JobDefinitionError, OperatorError, StreamletError, describe_record
from streamlet.functions import KeyedProcessFunction, OutputTag
from streamlet.outputs import Timestamps

if TYPE_CHECKING:
    from statebackend import KeyedStateBackend
    from streamlet.outputs import Output
    from streamlet.partitioners import KeySelector
    from streamlet.timers import TimerService

AsyncProcessBatch = Callable[[list[Any], Timestamps, int], Awaitable[None]]
"""Awaited by a subtask for a run of records of its input instead of `process_batch`."""

SideOutputs = list[tuple[str, Record]]


def is_asynchronous(function: KeyedProcessFunction) -> bool:
    """True when `function.process_element` is `async def` (checked by
    `check_process_function`)."""
    check_process_function(function)
    return inspect.iscoroutinefunction(function.process_element)


def check_process_function(function: KeyedProcessFunction) -> None:
    """Raise `JobDefinitionError` naming the method for what cannot run: an async generator (the
    runtime emits what an async `process_element` returns, once it finished) and an `async def
    on_timer` (timers fire synchronously while a watermark or processing time advances)."""
    name = type(function).__qualname__
    for method in ("process_element", "on_timer"):
        if inspect.isasyncgenfunction(getattr(function, method)):
            raise JobDefinitionError(
                f"{name}.{method} is an async generator (async def with yield), which streamlet "
                f"does not run: make it an async def that returns a list of the records to emit"
            )
    if inspect.iscoroutinefunction(function.on_timer):
        raise JobDefinitionError(
            f"{name}.on_timer is async def, but timers fire synchronously, in timestamp order, "
            f"while a watermark or processing time advances (before the watermark goes on): "
            f"make on_timer a plain def (only process_element may be async def)"
        )


class _Keyed:
    """Awaits `coroutine` with `key` the backend's current key before each of its steps."""

    __slots__ = ("_coroutine", "_set_key", "_key")

    def __init__(
        self, coroutine: Coroutine[Any, Any, Any], set_key: Callable[[Any], None], key: Any
    ) -> None:
        self._coroutine = coroutine
        self._set_key = set_key
        self._key = key

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, set_key, key = self._coroutine, self._set_key, self._key
        sent: Any = None
        error: BaseException | None = None
        while True:
            set_key(key)
            try:
                yielded = coroutine.send(sent) if error is None else coroutine.throw(error)
            except StopIteration as stop:
                return stop.value
            try:
                sent = yield yielded
                error = None
            except GeneratorExit:
                set_key(key)
                coroutine.close()
                raise
            except BaseException as e:  # noqa: BLE001 - thrown into the coroutine, as awaited
                sent, error = None, e


class _RecordContext:
    """The `KeyedContext` of one record of an async `process_element`: its key and timestamp,
    and its side outputs, held until the part's outputs are emitted in input order."""

    __slots__ = ("key", "timestamp", "timers", "state", "side")

    def __init__(
        self,
        key: Any,
        timestamp: int | None,
        timers: "TimerService",
        get_state: Callable[[Any], Any],
    ) -> None:
        self.key = key
        self.timestamp = timestamp
        self.timers = timers
        self.state = get_state  # the handle of a descriptor, bound to the current key
        self.side: SideOutputs | None = None

    def output(self, tag: OutputTag, value: Any) -> None:
        if self.side is None:
            self.side = []
        self.side.append((tag.name, Record(value, self.timestamp)))


class AsyncProcessBatches:
    """Runs the input batches of a `KeyedProcessOperator` whose function's `process_element` is
    `async def` (see the module docstring); `process_batch` is what its subtask awaits."""

    def __init__(
        self,
        operator_name: str,
        function: KeyedProcessFunction,
        key_selectors: "list[KeySelector]",
        backend: "KeyedStateBackend",
        timers: "TimerService",
        output: "Output",
        max_records: int,
    ) -> None:
        self._name = operator_name
        self._process_element = function.process_element
        self._key_selectors = key_selectors
        self._backend = backend
        self._timers = timers
        self._output = output
        self._max_records = max_records

    async def process_batch(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        step = self._max_records
        if len(values) <= step:
            await self._run_part(values, timestamps, input_index)
            return
        for start in range(0, len(values), step):
            part_timestamps = None if timestamps is None else timestamps[start : start + step]
            await self._run_part(values[start : start + step], part_timestamps, input_index)

    async def _run_part(
        self, values: list[Any], timestamps: Timestamps, input_index: int
    ) -> None:
        results: list[list[Any] | None] = [None] * len(values)
        sides: list[SideOutputs | None] = [None] * len(values)
        tasks = [
            asyncio.create_task(self._run_key(key, indices, values, timestamps, results, sides))
            for key, indices in self._by_key(values, input_index)
        ]
        if not tasks:
            return
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            unfinished = [task for task in tasks if not task.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
        errors = [task.exception() for task in tasks if not task.cancelled()]
        for error in errors:
            if error is not None:
                raise error
        self._emit(results, sides, timestamps)

    def _by_key(self, values: list[Any], input_index: int) -> list[tuple[Any, list[int]]]:
        """The keys of the records, in order of first appearance, each with its records'
        indexes. Keys are told apart as the state backend does: `str`, `int` and `bytes` keys
        by value, any other by its serialized form."""
        select = self._key_selectors[input_index]
        serialize = self._backend.key_serializer.serialize
        groups: dict[Any, tuple[Any, list[int]]] = {}
        for index, value in enumerate(values):
            try:
                key = select(value)
                kind = type(key)
                identity = key if kind is str or kind is int or kind is bytes else (serialize(key),)
            except Exception as e:
                raise OperatorError(self._name, describe_record(value), e) from e
            group = groups.get(identity)
            if group is None:
                groups[identity] = (key, [index])
            else:
                group[1].append(index)
        return list(groups.values())

    async def _run_key(
        self,
        key: Any,
        indices: list[int],
        values: list[Any],
        timestamps: Timestamps,
        results: list[list[Any] | None],
        sides: list[SideOutputs | None],
    ) -> None:
        """The records of one key, one after the other."""
        backend = self._backend
        set_key, get_state, timers = backend.set_current_key, backend.get_state, self._timers
        process_element = self._process_element
        for index in indices:
            value = values[index]
            ctx = _RecordContext(
                key, None if timestamps is None else timestamps[index], timers, get_state
            )
            try:
                produced = await _Keyed(process_element(value, ctx), set_key, key)
                # still in the coroutine's last step: its key is current for a lazy iterable
                if produced is not None:
                    results[index] = list(produced)
            except StreamletError:
                raise
            except Exception as e:
                raise OperatorError(self._name, describe_record(value), e) from e
            except asyncio.CancelledError as e:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the part is cancelled
                # the record's own code raised it: a failure of the record, not an end of it
                raise OperatorError(self._name, describe_record(value), e) from e
            sides[index] = ctx.side

    def _emit(
        self,
        results: list[list[Any] | None],
        sides: list[SideOutputs | None],
        timestamps: Timestamps,
    ) -> None:
        """The part's side outputs and outputs, in the order of its records."""
        output = self._output
        for side in sides:
            if side is not None:
                for tag_name, record in side:
                    output.collect_side(tag_name, record)
        emitted: list[Any] = []
        emitted_timestamps: Timestamps = None if timestamps is None else []
        for index, produced in enumerate(results):
            if produced:
                emitted.extend(produced)
                if emitted_timestamps is not None and timestamps is not None:
                    emitted_timestamps.extend([timestamps[index]] * len(produced))
        if emitted:
            output.collect_batch(emitted, emitted_timestamps)
