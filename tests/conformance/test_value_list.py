"""Conformance: ValueState and ListState, current-key switching, namespaces."""

import pytest

from statebackend import (
    KeyedStateBackend,
    ListStateDescriptor,
    NoCurrentKeyError,
    ValueStateDescriptor,
)


def test_value_state_roundtrip_default_and_clear(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v", default=7))
    backend.set_current_key("k")
    assert state.value() == 7
    state.update({"a": [1, 2.5, None, True, b"x", (1, "t")]})
    assert state.value() == {"a": [1, 2.5, None, True, b"x", (1, "t")]}
    state.update(None)
    assert state.value() == 7
    state.update(3)
    state.clear()
    assert state.value() == 7


def test_mutable_default_is_a_fresh_copy(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v", default=[]))
    backend.set_current_key(1)
    state.value().append("leak")
    assert state.value() == []


def test_keys_are_isolated(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    other = backend.get_state(ValueStateDescriptor("w"))
    for key in ["a", "ab", "a\x00", 1, (1, 2), b"a"]:
        backend.set_current_key(key)
        state.update(repr(key))
    backend.set_current_key("a")
    other.update("other state")
    for key in ["a", "ab", "a\x00", 1, (1, 2), b"a"]:
        backend.set_current_key(key)
        assert state.value() == repr(key)
    backend.set_current_key("ab")
    assert other.value() is None
    assert backend.current_key == "ab"


def test_same_descriptor_name_gives_same_handle(backend: KeyedStateBackend) -> None:
    first = backend.get_state(ValueStateDescriptor("v"))
    assert backend.get_state(ValueStateDescriptor("v")) is first


def test_state_before_current_key_raises(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    with pytest.raises(NoCurrentKeyError, match="'v'"):
        state.value()


def test_list_state_methods(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ListStateDescriptor("l"))
    backend.set_current_key("k")
    assert state.get() == []
    state.add(1)
    state.add_all([2, "three", None, [4]])
    assert state.get() == [1, 2, "three", None, [4]]
    state.add_all([])
    assert state.get() == [1, 2, "three", None, [4]]
    state.update(["x", "y"])
    assert state.get() == ["x", "y"]
    state.update([])
    assert state.get() == []
    state.add("again")
    state.clear()
    assert state.get() == []


def test_list_of_many_elements(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ListStateDescriptor("l"))
    backend.set_current_key("k")
    for i in range(2000):
        state.add(i)
    assert state.get() == list(range(2000))


def test_namespaces_separate_values(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("window-sum", default=0))
    backend.set_current_key("user")
    for window, amount in [((0, 10), 1), ((10, 20), 5), ((0, 10), 2)]:
        state.set_namespace(window)
        state.update(state.value() + amount)
    state.set_namespace((0, 10))
    assert state.value() == 3
    state.set_namespace((10, 20))
    assert state.value() == 5
    state.set_namespace(None)
    assert state.value() == 0
    assert list(backend.keys("window-sum", namespace=(10, 20))) == ["user"]
    assert list(backend.keys("window-sum", namespace=(20, 30))) == []


def test_key_prefix_is_the_value_entry_key(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    backend.set_current_key("k")
    assert backend.store.get(backend.key_prefix("v")) is None
    state.update(1)
    assert backend.store.get(backend.key_prefix("v")) is not None
    backend.set_current_key("other")
    assert backend.store.get(backend.key_prefix("v")) is None
