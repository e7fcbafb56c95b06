"""Conformance: MapState."""

from statebackend import KeyedStateBackend, MapStateDescriptor


def test_map_state_methods(backend: KeyedStateBackend) -> None:
    state = backend.get_state(MapStateDescriptor("m"))
    backend.set_current_key("k")
    assert state.is_empty()
    assert state.get("missing") is None
    assert state.get("missing", "dflt") == "dflt"
    state.put("b", 2)
    state.put_all({"a": 1, "c": [3], ("t", 1): None})
    assert state.get("a") == 1
    assert state.contains("b") and "c" in state
    assert not state.contains("z")
    assert state.contains(("t", 1))
    assert not state.is_empty()
    assert dict(state.items()) == {"a": 1, "b": 2, "c": [3], ("t", 1): None}
    assert sorted(state.keys(), key=repr) == sorted(["a", "b", "c", ("t", 1)], key=repr)
    assert sorted(state.values(), key=repr) == sorted([1, 2, [3], None], key=repr)
    state.remove("b")
    state.remove("never there")
    assert not state.contains("b")
    state.clear()
    assert state.is_empty()
    assert list(state.items()) == []


def test_map_iteration_is_in_serialized_key_order(backend: KeyedStateBackend) -> None:
    state = backend.get_state(MapStateDescriptor("m"))
    backend.set_current_key("k")
    for i in reversed(range(100)):
        state.put(f"key-{i:03d}", i)
    assert list(state.keys()) == [f"key-{i:03d}" for i in range(100)]
    assert list(state) == list(state.keys())


def test_maps_of_different_keys_do_not_mix(backend: KeyedStateBackend) -> None:
    state = backend.get_state(MapStateDescriptor("m"))
    # "a" is a byte prefix of "ab"; map entries of one must not show up under the other.
    for key in ["a", "ab", "b"]:
        backend.set_current_key(key)
        state.put_all({f"{key}-{i}": i for i in range(3)})
    backend.set_current_key("a")
    assert sorted(state.keys()) == ["a-0", "a-1", "a-2"]
    state.clear()
    backend.set_current_key("ab")
    assert sorted(state.keys()) == ["ab-0", "ab-1", "ab-2"]


def test_map_modified_while_iterating(backend: KeyedStateBackend) -> None:
    state = backend.get_state(MapStateDescriptor("m"))
    backend.set_current_key("k")
    state.put_all({i: i for i in range(50)})
    for key, value in state.items():
        if value % 2:
            state.remove(key)
        else:
            state.put(key + 1000, value)
    assert sorted(state.keys()) == sorted([*range(0, 50, 2), *range(1000, 1050, 2)])
