"""Conformance: default and user-supplied serializers for keys, values, map keys, namespaces."""

import json
import traceback
from dataclasses import dataclass
from typing import Any

import pytest

from statebackend import (
    KeyedStateBackend,
    ListStateDescriptor,
    MapStateDescriptor,
    PickleSerializer,
    SerializationError,
    ValueStateDescriptor,
)
from streamlet.errors import user_code_location


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


def store(state: Any, value: Any) -> None:
    state.update(value)  # the user's line: an error in the state must point here


@pytest.mark.parametrize("value", [object(), lambda: 1], ids=["object", "lambda"])
def test_unserializable_value_names_the_state_once_and_points_at_the_users_line(
    backend: KeyedStateBackend, value: Any
) -> None:
    state = backend.get_state(ValueStateDescriptor("count"))
    backend.set_current_key("k")
    with pytest.raises(SerializationError) as raised:
        store(state, value)
    message = str(raised.value)
    kind = type(value).__name__
    assert message.startswith(f"state 'count': cannot serialize the value: type {kind} ")
    assert message.count("count") == 1 and message.count(kind) == 1
    assert message.count("cannot serialize") == 1 and message.count("PickleSerializer") == 1
    report = "".join(traceback.format_exception(raised.value))
    assert report.count("is not supported") == 1  # no chained error restating it
    assert user_code_location(raised.value) == f"{__file__}:{store.__code__.co_firstlineno + 1}"


def test_a_user_serializer_failure_is_named_once(backend: KeyedStateBackend) -> None:
    class Refusing:
        def serialize(self, value: Any) -> bytes:
            raise ValueError("no thanks")

        def deserialize(self, data: bytes) -> Any:
            return data

    state = backend.get_state(ValueStateDescriptor("v", serializer=Refusing()))
    backend.set_current_key("k")
    with pytest.raises(SerializationError) as raised:
        store(state, Point(1, 2))
    assert str(raised.value) == (
        "state 'v': cannot serialize the value: ValueError on a value of type Point: no thanks"
    )
    assert isinstance(raised.value.__cause__, ValueError)
