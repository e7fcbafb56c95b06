"""State descriptors: the name, type, serializers and TTL of a piece of keyed state.

A descriptor is what an operator asks for; the backend answers with a state handle bound to the
current key. One name holds one state type for the life of the backend and across restores.
"""

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, Protocol

from statebackend.serializers import DEFAULT_SERIALIZER, Serializer
from statebackend.ttl import TtlConfig


class AggregateFunction(Protocol):
    """Folds values into an accumulator and reads a result out of it (Flink's AggregateFunction)."""

    def create_accumulator(self) -> Any: ...

    def add(self, value: Any, accumulator: Any) -> Any: ...

    def get_result(self, accumulator: Any) -> Any: ...


@dataclass(frozen=True)
class StateDescriptor:
    """Base of the descriptors; `kind` names the state type."""

    name: str
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a state name must be a non-empty string, got {self.name!r}")

    @property
    def ttl_config(self) -> TtlConfig | None:
        return getattr(self, "ttl", None)


@dataclass(frozen=True)
class ValueStateDescriptor(StateDescriptor):
    """A single value per key; `value()` returns `default` when unset."""

    default: Any = None
    _: KW_ONLY
    serializer: Serializer = DEFAULT_SERIALIZER
    ttl: TtlConfig | None = None
    kind: ClassVar[str] = "value"


@dataclass(frozen=True)
class ListStateDescriptor(StateDescriptor):
    """A list per key, appended to cheaply. With TTL, each element expires on its own."""

    _: KW_ONLY
    serializer: Serializer = DEFAULT_SERIALIZER
    ttl: TtlConfig | None = None
    kind: ClassVar[str] = "list"


@dataclass(frozen=True)
class MapStateDescriptor(StateDescriptor):
    """A map per key; each entry is stored (and expires) on its own."""

    _: KW_ONLY
    key_serializer: Serializer = DEFAULT_SERIALIZER
    value_serializer: Serializer = DEFAULT_SERIALIZER
    ttl: TtlConfig | None = None
    kind: ClassVar[str] = "map"


@dataclass(frozen=True)
class ReducingStateDescriptor(StateDescriptor):
    """A value per key that `add` combines with `reduce(current, new)`."""

    reduce: Callable[[Any, Any], Any] | None = None
    _: KW_ONLY
    serializer: Serializer = DEFAULT_SERIALIZER
    ttl: TtlConfig | None = None
    kind: ClassVar[str] = "reducing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.reduce):
            raise ValueError(f"reducing state '{self.name}' needs a reduce function")


@dataclass(frozen=True)
class AggregatingStateDescriptor(StateDescriptor):
    """An accumulator per key that `add` folds values into; `get` returns the aggregate's result."""

    aggregate: AggregateFunction | None = None
    _: KW_ONLY
    accumulator_serializer: Serializer = DEFAULT_SERIALIZER
    ttl: TtlConfig | None = None
    kind: ClassVar[str] = "aggregating"

    def __post_init__(self) -> None:
        super().__post_init__()
        for method in ("create_accumulator", "add", "get_result"):
            if not callable(getattr(self.aggregate, method, None)):
                raise ValueError(
                    f"aggregating state '{self.name}' needs an aggregate function with {method}()"
                )
