"""Conformance: ReducingState and AggregatingState."""

import operator
from typing import Any

from statebackend import (
    AggregatingStateDescriptor,
    KeyedStateBackend,
    ReducingStateDescriptor,
)


class Average:
    def create_accumulator(self) -> list[float]:
        return [0.0, 0]

    def add(self, value: float, accumulator: list[Any]) -> list[Any]:
        return [accumulator[0] + value, accumulator[1] + 1]

    def get_result(self, accumulator: list[Any]) -> float:
        return accumulator[0] / accumulator[1]


def test_reducing_state(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ReducingStateDescriptor("sum", operator.add))
    backend.set_current_key("a")
    assert state.get() is None
    for i in range(1, 5):
        state.add(i)
    assert state.get() == 10
    backend.set_current_key("b")
    state.add(100)
    assert state.get() == 100
    state.clear()
    assert state.get() is None
    backend.set_current_key("a")
    assert state.get() == 10


def test_aggregating_state(backend: KeyedStateBackend) -> None:
    state = backend.get_state(AggregatingStateDescriptor("avg", Average()))
    backend.set_current_key("a")
    assert state.get() is None
    for value in [1.0, 2.0, 6.0]:
        state.add(value)
    assert state.get() == 3.0
    state.clear()
    assert state.get() is None
