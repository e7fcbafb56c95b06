"""Conformance: default and user-supplied serializers for keys, values, map keys, namespaces."""

import json
from dataclasses import dataclass
from typing import Any

import pytest

from statebackend import (
    ListStateDescriptor,
    MapStateDescriptor,
    PickleSerializer,
    SerializationError,
    ValueStateDescriptor,
)


@dataclass(frozen=True)
class Point:
    x: int
    y: int


class JsonSerializer:
    """A user-supplied serializer: anything with serialize/deserialize."""

    def serialize(self, value: Any) -> bytes:
        return json.dumps(value, sort_keys=True).encode()

    def deserialize(self, data: bytes) -> Any:
        return json.loads(data)


class NotBytesSerializer:
    def serialize(self, value: Any) -> str:
        return str(value)

    def deserialize(self, data: bytes) -> Any:
        return data


def test_user_supplied_value_and_map_serializers(open_backend) -> None:
    backend = open_backend()
    value = backend.get_state(ValueStateDescriptor("v", serializer=JsonSerializer()))
    mapped = backend.get_state(
        MapStateDescriptor(
            "m", key_serializer=JsonSerializer(), value_serializer=PickleSerializer()
        )
    )
    backend.set_current_key("k")
    value.update({"b": [1, 2], "a": None})
    mapped.put("p", Point(1, 2))
    restored = open_backend(restore=backend.snapshot(1))
    restored.set_current_key("k")
    assert restored.get_state(ValueStateDescriptor("v", serializer=JsonSerializer())).value() == {
        "a": None,
        "b": [1, 2],
    }
    restored_map = restored.get_state(
        MapStateDescriptor(
            "m", key_serializer=JsonSerializer(), value_serializer=PickleSerializer()
        )
    )
    assert dict(restored_map.items()) == {"p": Point(1, 2)}


def test_user_supplied_key_serializer(open_backend) -> None:
    backend = open_backend(key_serializer=PickleSerializer())
    state = backend.get_state(ListStateDescriptor("l", serializer=PickleSerializer()))
    for point in [Point(0, 0), Point(1, 2)]:
        backend.set_current_key(point)
        state.add(point)
    assert sorted(backend.keys("l"), key=lambda p: (p.x, p.y)) == [Point(0, 0), Point(1, 2)]
    backend.set_current_key(Point(1, 2))
    assert state.get() == [Point(1, 2)]


def test_default_serializer_round_trips_supported_types(backend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    backend.set_current_key("k")
    for value in [0, -1, 2**63 - 1, 1.5, "s", b"b", [1, [2]], (1, (2, "x")), {"k": (1,)}, True]:
        state.update(value)
        assert state.value() == value
        assert type(state.value()) is type(value)


def test_serializer_that_returns_no_bytes(backend) -> None:
    state = backend.get_state(ValueStateDescriptor("v", serializer=NotBytesSerializer()))
    backend.set_current_key("k")
    with pytest.raises(SerializationError, match="state 'v'.*returned str, not bytes"):
        state.update(1)


def test_unsupported_type_names_the_type(backend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    backend.set_current_key("k")
    with pytest.raises(SerializationError, match="Point.*PickleSerializer"):
        state.update(Point(1, 2))
    with pytest.raises(SerializationError, match="set"):
        state.update({1, 2})
