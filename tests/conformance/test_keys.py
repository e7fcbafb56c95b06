"""Conformance: key groups, isolation between subtasks, iteration over the keys of a state."""

import pytest

from statebackend import (
    KeyedStateBackend,
    KeyGroupOutOfRangeError,
    KeyGroupRange,
    ListStateDescriptor,
    MapStateDescriptor,
    ValueStateDescriptor,
    key_group_of,
)
from statebackend.keygroups import subtask_of_key_group
from statebackend.serializers import MsgpackSerializer
from tests.conformance.conftest import subtask_ranges


def test_key_group_ranges_partition_all_groups() -> None:
    for max_parallelism, parallelism in [(128, 1), (128, 3), (128, 128), (10, 7), (32768, 5)]:
        ranges = subtask_ranges(max_parallelism, parallelism)
        covered = [kg for r in ranges for kg in r]
        assert covered == list(range(max_parallelism))
        for index, key_groups in enumerate(ranges):
            for kg in (key_groups.start, key_groups.end):
                assert subtask_of_key_group(max_parallelism, parallelism, kg) == index


def test_key_group_hash_is_stable() -> None:
    # Pinned values: a change of hash or key encoding would silently move state between subtasks
    # and orphan every existing checkpoint.
    keys = ["a", "b", 1, "user-42", (1, "x")]
    serialized = [MsgpackSerializer().serialize(k) for k in keys]
    assert [key_group_of(k, 128) for k in serialized] == [104, 6, 107, 95, 11]
    assert [key_group_of(k, 32768) for k in serialized] == [3432, 3846, 20203, 29407, 15499]


def test_subtasks_own_only_their_key_groups(open_backend) -> None:
    ranges = subtask_ranges(128, 3)
    backends = [open_backend(scope=f"op/{i}", key_group_range=r) for i, r in enumerate(ranges)]
    owner: dict[str, int] = {}
    for n in range(300):
        key = f"key-{n}"
        kg = key_group_of(MsgpackSerializer().serialize(key), 128)
        index = subtask_of_key_group(128, 3, kg)
        owner[key] = index
        backend = backends[index]
        backend.set_current_key(key)
        backend.get_state(ValueStateDescriptor("v")).update(n)
        wrong = backends[(index + 1) % 3]
        with pytest.raises(KeyGroupOutOfRangeError, match="key group"):
            wrong.set_current_key(key)
    for index, backend in enumerate(backends):
        keys = set(backend.keys("v"))
        assert keys == {k for k, i in owner.items() if i == index}


def test_keys_iteration_is_complete_and_ordered(backend: KeyedStateBackend) -> None:
    value = backend.get_state(ValueStateDescriptor("v"))
    mapped = backend.get_state(MapStateDescriptor("m"))
    keys = [f"k{i}" for i in range(500)] + [i for i in range(200)] + [("t", 1), b"raw", ""]
    for key in keys:
        backend.set_current_key(key)
        value.update(1)
        mapped.put_all({"x": 1, "y": 2})
    serializer = MsgpackSerializer()
    expected = sorted(
        keys,
        key=lambda k: (key_group_of(serializer.serialize(k), 128), serializer.serialize(k)),
    )
    assert list(backend.keys("v")) == expected
    assert list(backend.keys("m")) == expected  # one per key, though it has two map entries


def test_keys_skips_cleared_and_empty(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ListStateDescriptor("l"))
    for key in ["a", "b", "c"]:
        backend.set_current_key(key)
        state.add(key)
    backend.set_current_key("b")
    state.clear()
    assert sorted(backend.keys("l")) == ["a", "c"]


def test_state_written_while_iterating_keys(backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v", default=0))
    for i in range(100):
        backend.set_current_key(i)
        state.update(i)
    seen = []
    for key in backend.keys("v"):
        seen.append(key)
        backend.set_current_key(key)
        state.update(state.value() * 2)
    assert sorted(seen) == list(range(100))
    for i in range(100):
        backend.set_current_key(i)
        assert state.value() == 2 * i


def test_explicit_range_of_all_key_groups(open_backend) -> None:
    backend = open_backend(key_group_range=KeyGroupRange.all(16), max_parallelism=16)
    state = backend.get_state(ValueStateDescriptor("v"))
    for i in range(100):
        backend.set_current_key(i)
        state.update(i)
    assert sorted(backend.keys("v")) == list(range(100))
