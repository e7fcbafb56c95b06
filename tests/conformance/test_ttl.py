"""Conformance: time-to-live, on every state type, with an injected clock."""

import operator

from statebackend import (
    KeyedStateBackend,
    ListStateDescriptor,
    MapStateDescriptor,
    ReducingStateDescriptor,
    TtlConfig,
    TtlUpdate,
    ValueStateDescriptor,
)
from tests.conformance.conftest import ManualClock

TTL = TtlConfig(1000)
TTL_READ = TtlConfig(1000, TtlUpdate.ON_READ_AND_WRITE)


def test_value_expires_and_is_never_returned(
    backend: KeyedStateBackend, clock: ManualClock
) -> None:
    state = backend.get_state(ValueStateDescriptor("v", default="gone", ttl=TTL))
    backend.set_current_key("k")
    state.update("here")
    clock.advance(999)
    assert state.value() == "here"
    clock.advance(1)
    assert state.value() == "gone"
    assert list(backend.keys("v")) == []


def test_write_restarts_ttl(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(ValueStateDescriptor("v", ttl=TTL))
    backend.set_current_key("k")
    state.update(1)
    clock.advance(800)
    state.update(2)
    clock.advance(800)
    assert state.value() == 2


def test_on_create_and_write_does_not_extend_on_read(
    backend: KeyedStateBackend, clock: ManualClock
) -> None:
    state = backend.get_state(ValueStateDescriptor("v", ttl=TTL))
    backend.set_current_key("k")
    state.update(1)
    clock.advance(600)
    assert state.value() == 1
    clock.advance(600)
    assert state.value() is None


def test_on_read_and_write_extends_on_read(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(ValueStateDescriptor("v", ttl=TTL_READ))
    backend.set_current_key("k")
    state.update(1)
    for _ in range(5):
        clock.advance(600)
        assert state.value() == 1
    clock.advance(1000)
    assert state.value() is None


def test_list_elements_expire_one_by_one(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(ListStateDescriptor("l", ttl=TTL))
    backend.set_current_key("k")
    state.add("old")
    clock.advance(600)
    state.add_all(["new", "newer"])
    assert state.get() == ["old", "new", "newer"]
    clock.advance(500)
    assert state.get() == ["new", "newer"]
    clock.advance(500)
    assert state.get() == []
    assert list(backend.keys("l")) == []


def test_map_entries_expire_one_by_one(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(MapStateDescriptor("m", ttl=TTL))
    backend.set_current_key("k")
    state.put("old", 1)
    clock.advance(600)
    state.put("new", 2)
    clock.advance(500)
    assert dict(state.items()) == {"new": 2}
    assert not state.contains("old")
    assert state.get("old") is None
    clock.advance(500)
    assert state.is_empty()


def test_map_on_read_and_write(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(MapStateDescriptor("m", ttl=TTL_READ))
    backend.set_current_key("k")
    state.put("a", 1)
    clock.advance(900)
    assert state.get("a") == 1
    clock.advance(900)
    assert dict(state.items()) == {"a": 1}
    clock.advance(1000)
    assert state.is_empty()


def test_reducing_state_with_ttl(backend: KeyedStateBackend, clock: ManualClock) -> None:
    state = backend.get_state(ReducingStateDescriptor("sum", operator.add, ttl=TTL))
    backend.set_current_key("k")
    state.add(1)
    state.add(2)
    clock.advance(1000)
    assert state.get() is None
    state.add(5)
    assert state.get() == 5


def test_ttl_survives_snapshot_and_restore(
    open_backend, backend: KeyedStateBackend, clock: ManualClock
) -> None:
    state = backend.get_state(ValueStateDescriptor("v", ttl=TTL))
    backend.set_current_key("k")
    state.update("x")
    handle = backend.snapshot(1)
    restored = open_backend(restore=handle)
    restored_state = restored.get_state(ValueStateDescriptor("v", ttl=TTL))
    restored.set_current_key("k")
    assert restored_state.value() == "x"
    clock.advance(1000)
    assert restored_state.value() is None
