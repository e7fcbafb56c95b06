"""The functions users write: keyed process functions, aggregates, window functions, side outputs.

Simple transformations take plain callables (`stream.map(len)`). Stateful and timer-driven logic
subclasses `KeyedProcessFunction`; its `process_element` and `on_timer` return (or yield) the
records to emit, and reach state, timers and side outputs through the context. `process_element`
may be `async def` (`streamlet.async_process`).

>>> from statebackend import ValueStateDescriptor
>>> class CountPerKey(KeyedProcessFunction):
...     COUNT = ValueStateDescriptor("count", default=0)
...     def process_element(self, value, ctx):
...         count = ctx.state(self.COUNT)
...         count.update(count.value() + 1)
...         yield (ctx.key, count.value())
"""

import logging
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from streamlet.config import Configuration
    from streamlet.timers import TimerService


@dataclass(frozen=True)
class OutputTag:
    """Names a side output: `ctx.output(tag, value)` emits, `get_side_output(tag)` reads."""

    name: str


EndpointRegistry = Callable[[str], None]
"""Takes the `host:port` of a network endpoint a subtask serves."""

endpoint_registry: ContextVar[EndpointRegistry | None] = ContextVar(
    "streamlet_endpoint_registry", default=None
)
"""Set by a cluster task manager around a job it runs; unset in a local run."""

DrainHandler = Callable[[float], Awaitable[None]]
"""Awaited with a grace period (seconds) when the task manager running a subtask drains."""

drain_registry: ContextVar[Callable[[DrainHandler], None] | None] = ContextVar(
    "streamlet_drain_registry", default=None
)
"""Set by a cluster task manager around a job it runs; unset in a local run."""


@dataclass(frozen=True)
class RuntimeContext:
    """Where a function instance runs."""

    job_name: str
    operator_name: str
    subtask_index: int
    parallelism: int
    config: "Configuration | None" = None  # the job's configuration (None outside a job run)

    def register_endpoint(self, address: str) -> None:
        """Announce `host:port` as an endpoint this job serves: in a cluster, the job manager
        lists it under the job (`streamlet status`, `job:<name>` addresses); locally it is logged.
        """
        registry = endpoint_registry.get()
        if registry is None:
            logging.getLogger("streamlet.endpoints").info(
                "%s (subtask %d) serves %s", self.job_name, self.subtask_index, address
            )
        else:
            registry(address)

    def on_drain(self, handler: DrainHandler) -> None:
        """Have `await handler(grace_s)` run when the task manager running this subtask drains
        (SIGTERM): the handler stops taking work and finishes what it runs within `grace_s`
        seconds; then the job is stopped. Nothing drains outside a cluster: ignored there."""
        registry = drain_registry.get()
        if registry is not None:
            registry(handler)


class KeyedContext(Protocol):
    """What `KeyedProcessFunction` methods see: the key, time, state, timers, side outputs."""

    @property
    def key(self) -> Any: ...

    @property
    def timestamp(self) -> int | None:
        """The event time of the current record (or the firing timer), None without event time."""
        ...

    @property
    def timers(self) -> "TimerService": ...

    def state(self, descriptor: Any) -> Any:
        """The handle of `descriptor` (a statebackend descriptor), bound to the current key."""
        ...

    def output(self, tag: OutputTag, value: Any) -> None: ...


class KeyedProcessFunction:
    """Per-key logic with state and timers; override `process_element` and maybe `on_timer`.

    `process_element` may be `async def` (returning a list of the records to emit, or None) to
    await the user's own I/O: the records of different keys then overlap while they await, those
    of one key run one after the other, and outputs keep the input order
    (`streamlet.async_process`; docs/runtime.md, "Asynchronous process functions"). `on_timer`
    is always a plain `def`.
    """

    def open(self, context: RuntimeContext) -> None:
        """Called once per subtask before the first record."""

    def process_element(self, value: Any, ctx: KeyedContext) -> Iterable[Any] | None:
        """Handle one record; return or yield the records to emit."""
        raise NotImplementedError

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> Iterable[Any] | None:
        """A timer registered for the current key fired; return or yield records to emit."""
        return None


class AggregateFunction:
    """Folds values into an accumulator (Flink's AggregateFunction).

    `merge` is needed only for session windows, whose windows merge.
    """

    def create_accumulator(self) -> Any:
        raise NotImplementedError

    def add(self, value: Any, accumulator: Any) -> Any:
        raise NotImplementedError

    def get_result(self, accumulator: Any) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement merge()")


WindowFunction = Callable[[Any, Any, list[Any]], Iterable[Any]]
"""`fn(key, window, elements)` returns (or yields) what a fired window emits."""

JoinFunction = Callable[[Any, Any], Any]
"""`fn(left, right)` returns the joined record."""
