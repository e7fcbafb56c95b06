"""Conformance: the state cache in front of every backend's store (`statebackend.cache`).

A write that follows a read of the same key (a read-modify-write) brings the value into the
cache; writes of cached values stay there until a snapshot, a scan of their state, a direct use of
the store or an eviction writes them back. What the store then holds, what iteration sees and what
a snapshot restores are exactly what every write going straight to the store would give.
"""

import dataclasses
import gc
import weakref

import msgpack
import pytest

from statebackend import (
    AggregatingStateDescriptor,
    KeyedStateBackend,
    ReducingStateDescriptor,
    TtlConfig,
    TtlUpdate,
    ValueStateDescriptor,
)
from statebackend.cache import ENTRY_OVERHEAD
from tests.conformance.conftest import ManualClock, OpenBackend

TTL_MS = 1000


def use_key(backend: KeyedStateBackend, key: object) -> None:
    """Set `key` (a read then a write of one of its states brings the value into the cache)."""
    backend.set_current_key(key)


def stored(backend: KeyedStateBackend, state: str) -> bytes | None:
    """The current key's entry of `state` in the store as it is (without the cache's writes)."""
    return backend.kv_store.get(backend.key_prefix(state))


def plain(value: object) -> bytes:
    """The envelope of a value that never expires, as the default serializer stores it."""
    return b"\x00" + msgpack.packb(value)


def expiring(value: object, expires_at: int) -> bytes:
    return b"\x01" + expires_at.to_bytes(8, "big") + msgpack.packb(value)


def test_writes_stay_in_the_cache_until_a_snapshot_writes_them_back_as_before(
    open_backend: OpenBackend,
) -> None:
    backend = open_backend()
    count = backend.get_state(ValueStateDescriptor("count", default=0))
    words = ["b", "a", "c", "a", "é", "a"]
    for word in words:
        use_key(backend, word)
        count.update(count.value() + 1)
    backend.set_current_key("a")
    assert count.value() == 3
    assert stored(backend, "count") is None  # not written yet

    handle = backend.snapshot(1)
    for word in set(words):
        backend.set_current_key(word)
        assert stored(backend, "count") == plain(words.count(word))
    restored = open_backend(restore=handle, scope="op/restored")
    again = restored.get_state(ValueStateDescriptor("count", default=0))
    for word in set(words):
        restored.set_current_key(word)
        assert again.value() == words.count(word)


def test_eviction_keeps_the_cache_within_its_bound_and_writes_evicted_entries_back(
    open_backend: OpenBackend, config
) -> None:
    cache_bytes = 40 * (ENTRY_OVERHEAD + 64)
    backend = open_backend(config=dataclasses.replace(config, cache_bytes=cache_bytes))
    state = backend.get_state(ValueStateDescriptor("v"))
    keys = 2_000
    for key in range(keys):
        use_key(backend, key)
        assert state.value() is None
        state.update(f"value-{key}")
        assert backend.cache.used <= backend.cache.max_bytes
    assert backend.cache.max_bytes < cache_bytes  # a quarter remembers keys
    assert len(state._entries) < keys // 10
    backend.set_current_key(0)  # evicted long ago: written to the store on its way out
    assert stored(backend, "v") == plain("value-0")
    for key in reversed(range(keys)):
        use_key(backend, key)
        assert state.value() == f"value-{key}"
    assert backend.cache.used <= backend.cache.max_bytes


def test_a_cache_of_zero_bytes_keeps_at_most_one_entry(open_backend: OpenBackend, config) -> None:
    backend = open_backend(config=dataclasses.replace(config, cache_bytes=0))
    total = backend.get_state(ReducingStateDescriptor("total", lambda a, b: a + b))
    for key in range(50):
        use_key(backend, key % 7)
        total.add(key)
        assert len(total._entries) <= 1
    for key in range(7):
        backend.set_current_key(key)
        assert total.get() == sum(range(key, 50, 7))


def test_ttl_through_the_cache_follows_the_injected_clock(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    backend = open_backend()
    created = backend.get_state(ValueStateDescriptor("created", ttl=TtlConfig(TTL_MS)))
    read = backend.get_state(
        ValueStateDescriptor("read", ttl=TtlConfig(TTL_MS, TtlUpdate.ON_READ_AND_WRITE))
    )
    use_key(backend, "k")
    assert created.value() is None and read.value() is None  # the writes below are cached
    start = clock.now_ms
    created.update("c")
    read.update("r")
    assert stored(backend, "created") is None
    clock.advance(TTL_MS - 1)
    assert created.value() == "c"
    assert read.value() == "r"  # refreshes its expiry
    backend.snapshot(1)
    assert stored(backend, "created") == expiring("c", start + TTL_MS)
    assert stored(backend, "read") == expiring("r", start + 2 * TTL_MS - 1)

    clock.advance(1)
    assert created.value() is None  # expired: deleted from the store at the next write-back
    assert read.value() == "r"
    assert stored(backend, "created") is not None
    backend.snapshot(2)
    assert stored(backend, "created") is None
    clock.advance(TTL_MS)
    assert read.value() is None
    assert list(backend.keys("read")) == []
    assert stored(backend, "read") is None


def test_an_expired_entry_restored_from_a_snapshot_is_not_returned(
    open_backend: OpenBackend, clock: ManualClock
) -> None:
    backend = open_backend()
    descriptor = ValueStateDescriptor("v", ttl=TtlConfig(TTL_MS))
    backend.set_current_key("k")
    backend.get_state(descriptor).update(1)
    handle = backend.snapshot(1)
    restored = open_backend(restore=handle, scope="op/restored")
    state = restored.get_state(descriptor)
    use_key(restored, "k")
    assert state.value() == 1  # read from the store
    clock.advance(TTL_MS)
    assert state.value() is None
    state.update(state.value())  # a read-modify-write of nothing: None clears
    assert not state._entries
    restored.set_current_key("k")
    assert state.value() is None


def test_iteration_sees_cached_writes_and_writes_made_while_iterating(
    backend: KeyedStateBackend,
) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    for key in range(20):
        use_key(backend, key)
        state.value()
        state.update(key)
    backend.set_current_key(3)
    assert stored(backend, "v") is None
    seen = []
    for key in backend.keys("v"):
        seen.append(key)
        backend.set_current_key(key)
        state.update(None if key % 2 else key * 10)
    assert sorted(seen) == list(range(20))
    assert sorted(backend.keys("v")) == list(range(0, 20, 2))
    backend.set_current_key(4)
    assert state.value() == 40


def test_keys_equal_in_python_but_serialized_differently_stay_distinct(
    open_backend: OpenBackend,
) -> None:
    backend = open_backend()
    state = backend.get_state(ValueStateDescriptor("v"))
    keys = [1, 1.0, True, (1,), (True,), (1.0,), "1", b"1"]
    for index, key in enumerate(keys):
        use_key(backend, key)
        state.value()  # cached (absent)
        state.update(index)
    assert len(state._entries) == len(keys)
    for index, key in enumerate(keys):
        backend.set_current_key(key)
        assert state.value() == index, key
    handle = backend.snapshot(1)
    assert sorted(map(repr, backend.keys("v"))) == sorted(map(repr, keys))
    restored = open_backend(restore=handle, scope="op/restored")
    again = restored.get_state(ValueStateDescriptor("v"))
    for index, key in enumerate(keys):
        restored.set_current_key(key)
        assert again.value() == index, key


@pytest.mark.parametrize("value", [[1, 2], {"a": [1]}, (1, "x"), "é", 2**70 // 2**10])
def test_what_a_reader_gets_is_a_copy_and_values_are_stored_as_before(
    backend: KeyedStateBackend, value: object
) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    use_key(backend, "k")
    state.value()
    state.update(value)
    got = state.value()
    assert got == value
    if isinstance(got, list | dict):
        got.clear()  # a mutated copy changes nothing
        assert state.value() == value
    backend.snapshot(1)
    assert stored(backend, "v") == b"\x00" + backend.key_serializer.serialize(value)


def test_a_mutable_value_updated_then_mutated_keeps_what_was_written(
    backend: KeyedStateBackend,
) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    use_key(backend, "k")
    state.value()
    value = [1, 2]
    state.update(value)
    value.append(3)
    assert state.value() == [1, 2]


def test_aggregating_and_reducing_states_are_cached_too(backend: KeyedStateBackend) -> None:
    class Average:
        def create_accumulator(self) -> list[int]:
            return [0, 0]

        def add(self, value: int, accumulator: list[int]) -> list[int]:
            accumulator[0] += value
            accumulator[1] += 1
            return accumulator

        def get_result(self, accumulator: list[int]) -> float:
            return accumulator[0] / accumulator[1]

    average = backend.get_state(AggregatingStateDescriptor("avg", Average()))
    total = backend.get_state(ReducingStateDescriptor("sum", lambda a, b: a + b))
    use_key(backend, "k")
    assert average.get() is None and total.get() is None
    for value in (1, 2, 6):
        average.add(value)
        total.add(value)
    assert average.get() == 3 and total.get() == 9
    assert stored(backend, "avg") is None
    backend.snapshot(1)
    assert stored(backend, "avg") == plain([9, 3])
    assert stored(backend, "sum") == plain(9)


def test_the_store_handed_out_holds_every_write_and_direct_writes_are_read_back(
    backend: KeyedStateBackend,
) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    use_key(backend, "k")
    state.value()
    state.update(1)
    assert stored(backend, "v") is None
    store = backend.store  # written back, the cache emptied
    assert store.get(backend.key_prefix("v")) == plain(1)
    store.put(backend.key_prefix("v"), plain(5))
    assert state.value() == 5


def test_only_a_read_modify_write_brings_a_value_into_the_cache(
    backend: KeyedStateBackend,
) -> None:
    state = backend.get_state(ValueStateDescriptor("v", default=0))
    for key in range(10):  # writes without a read, then reads: nothing is cached
        backend.set_current_key(key)
        state.update(key)
        assert stored(backend, "v") == plain(key)
    for key in range(10):
        backend.set_current_key(key)
        assert state.value() == key
    assert not state._entries
    assert not backend._known_keys  # nor are the keys remembered
    backend.set_current_key(3)  # a read then a write of the same key: cached
    state.update(state.value() + 1)
    assert stored(backend, "v") == plain(3)
    assert [entry.value for entry in state._entries.values()] == [4]
    backend.set_current_key(5)  # a write of a value not in the cache, after no read of it
    state.update(50)
    assert stored(backend, "v") == plain(50)
    state.clear()
    assert stored(backend, "v") is None
    backend.set_current_key(6)
    state.value()
    backend.set_current_key(7)  # a write after a read of another key goes to the store
    state.update(70)
    assert stored(backend, "v") == plain(70)
    assert len(state._entries) == 1


def test_descriptors_made_per_call_are_not_retained(backend: KeyedStateBackend) -> None:
    """`ctx.state(ValueStateDescriptor(...))` per record: memory stays bounded."""
    first = ValueStateDescriptor("v", default=0)
    handle = backend.get_state(first)
    assert backend.get_state(first) is handle
    first_ref = weakref.ref(first)
    del first
    for _ in range(3):
        assert backend.get_state(ValueStateDescriptor("v", default=0)) is handle
    gc.collect()
    assert first_ref() is None
