"""Conformance: restoring with another parallelism (a rescale) and reading snapshots (`export`).

A new subtask's backend is restored from the snapshots of the old subtasks whose key groups
overlap its own: it holds exactly their entries of its key groups, whatever the state type, the
namespace or the TTL, also when the old snapshots numbered their states differently.
"""

import json
from pathlib import Path
from typing import Any

import pytest

import statebackend.backend
from statebackend import (
    BackendConfig,
    InvalidHandleError,
    KeyedStateBackend,
    KeyGroupRange,
    ListStateDescriptor,
    MapStateDescriptor,
    ReducingStateDescriptor,
    StateHandle,
    TtlConfig,
    ValueStateDescriptor,
    key_group_of,
)
from statebackend.backend import new_state_id
from statebackend.dfs import filesystem
from statebackend.layout import key_group_prefix
from statebackend.registry import store_factory
from statebackend.serializers import DEFAULT_SERIALIZER
from statebackend.store import StoreContext
from tests.conformance.conftest import ManualClock, OpenBackend, checkpoint_files, subtask_ranges

MAX_PARALLELISM = 128
KEYS = [f"key-{i}" for i in range(400)]
TTL = TtlConfig(10_000)


def key_group(key: Any) -> int:
    return key_group_of(DEFAULT_SERIALIZER.serialize(key), MAX_PARALLELISM)


def keys_in(key_groups: KeyGroupRange) -> list[str]:
    return [key for key in KEYS if key_group(key) in key_groups]


DESCRIPTORS = {
    "value": ValueStateDescriptor("value"),
    "list": ListStateDescriptor("list"),
    "map": MapStateDescriptor("map"),
    "sum": ReducingStateDescriptor("sum", lambda a, b: a + b),
    "expiring": ValueStateDescriptor("expiring", ttl=TTL),
}


def fill(backend: KeyedStateBackend, keys: list[str]) -> None:
    """Every state type, a namespace and a TTL entry for each key."""
    states = {name: backend.get_state(d) for name, d in DESCRIPTORS.items()}
    for key in keys:
        backend.set_current_key(key)
        states["value"].update(f"v-{key}")
        states["list"].add_all([key, len(key)])
        states["map"].put_all({"a": key, "b": 2})
        states["sum"].add(3)
        states["sum"].add(4)
        states["expiring"].update(key)
        states["value"].set_namespace(("window", 1))
        states["value"].update(f"w-{key}")
        states["value"].set_namespace(None)


def read(backend: KeyedStateBackend) -> dict[str, tuple]:
    """Every key's state, for the keys the backend iterates."""
    states = {name: backend.get_state(d) for name, d in DESCRIPTORS.items()}
    result = {}
    for key in backend.keys("value"):
        backend.set_current_key(key)
        value = states["value"].value()
        states["value"].set_namespace(("window", 1))
        in_window = states["value"].value()
        states["value"].set_namespace(None)
        result[key] = (
            value,
            in_window,
            states["list"].get(),
            dict(states["map"].items()),
            states["sum"].get(),
            states["expiring"].value(),
        )
    return result


def expected(keys: list[str]) -> dict[str, tuple]:
    return {
        key: (f"v-{key}", f"w-{key}", [key, len(key)], {"a": key, "b": 2}, 7, key) for key in keys
    }


def snapshots(open_backend: OpenBackend, parallelism: int, checkpoint_id: int = 1) -> list:
    """Snapshots of `parallelism` filled subtask backends, as JSON would give them back."""
    handles = []
    for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, parallelism)):
        backend = open_backend(scope=f"op/{index}", key_group_range=key_groups)
        fill(backend, keys_in(key_groups))
        handles.append(json.loads(json.dumps(backend.snapshot(checkpoint_id).to_dict())))
    return handles


def rescaled(open_backend: OpenBackend, handles: list, parallelism: int) -> list:
    return [
        open_backend(scope=f"op/{index}", key_group_range=key_groups, restore=handles)
        for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, parallelism))
    ]


def test_rescale_up_and_down_keeps_every_entry_in_its_new_subtask(open_backend) -> None:
    two = snapshots(open_backend, 2)
    three = rescaled(open_backend, two, 3)
    for backend in three:
        assert read(backend) == expected(keys_in(backend.key_group_range))
    # And down again, from the rescaled backends' own snapshots (3 -> 1).
    handles = [backend.snapshot(2) for backend in three]
    (one,) = rescaled(open_backend, handles, 1)
    assert read(one) == expected(KEYS)
    # A single handle of other key groups is a rescale too (1 -> 2).
    single = one.snapshot(3)
    for backend in rescaled(open_backend, [single], 2):
        assert read(backend) == expected(keys_in(backend.key_group_range))


def test_a_rescaled_backend_writes_snapshots_and_restores_like_any_other(
    open_backend, clock: ManualClock
) -> None:
    first, second = rescaled(open_backend, snapshots(open_backend, 3), 2)
    first.set_current_key(keys_in(first.key_group_range)[0])
    first.get_state(DESCRIPTORS["value"]).update("changed")
    handle = first.snapshot(2)
    restored = open_backend(scope="op/0", key_group_range=first.key_group_range, restore=handle)
    assert read(restored) == read(first)
    assert read(restored) != expected(keys_in(first.key_group_range))
    clock.advance(TTL.ttl_ms)  # entries kept their expiry time through the rescale
    restored.set_current_key(keys_in(first.key_group_range)[1])
    assert restored.get_state(DESCRIPTORS["expiring"]).value() is None
    assert restored.get_state(DESCRIPTORS["value"]).value() is not None


def test_handles_that_leave_key_groups_uncovered_are_refused(open_backend) -> None:
    two = snapshots(open_backend, 2)
    with pytest.raises(InvalidHandleError, match=r"key groups 64\.\.127 of 0\.\.127 without"):
        open_backend(restore=two[:1])
    with pytest.raises(InvalidHandleError, match="key group 0 is in two restored snapshots"):
        open_backend(restore=[two[0], two[0], two[1]])
    other = json.loads(json.dumps(two[1]))
    other["backend"] = "other"
    with pytest.raises(InvalidHandleError, match="handle of op/1 is a snapshot of the 'other'"):
        open_backend(restore=[two[0], other])


def sequential_snapshots(
    open_backend: OpenBackend, monkeypatch: pytest.MonkeyPatch, reverse_second: bool
) -> list[StateHandle]:
    """Snapshots of 2 subtasks as older versions took them: states numbered in the order they
    were registered (1, 2, ...); the second subtask registers them in reverse if asked."""
    with monkeypatch.context() as patch:
        patch.setattr(
            statebackend.backend, "new_state_id", lambda name, taken: max(taken, default=0) + 1
        )
        handles = []
        for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, 2)):
            backend = open_backend(scope=f"op/{index}", key_group_range=key_groups)
            order = list(DESCRIPTORS.values())
            for descriptor in reversed(order) if index and reverse_second else order:
                backend.get_state(descriptor)
            fill(backend, keys_in(key_groups))
            handles.append(backend.snapshot(1))
    return handles


def test_snapshots_that_number_states_differently_are_renumbered(
    open_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    handles = sequential_snapshots(open_backend, monkeypatch, reverse_second=True)
    assert handles[0].states["value"].state_id != handles[1].states["value"].state_id
    (one,) = rescaled(open_backend, handles, 1)
    assert read(one) == expected(KEYS)
    taken: set[int] = set()
    renumbered = one.snapshot(2).states
    for name in sorted(DESCRIPTORS):
        assert renumbered[name].state_id == new_state_id(name, taken)
        taken.add(renumbered[name].state_id)


def test_snapshots_that_agree_on_old_ids_keep_them(
    open_backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    handles = sequential_snapshots(open_backend, monkeypatch, reverse_second=False)
    (one,) = rescaled(open_backend, handles, 1)
    assert read(one) == expected(KEYS)
    assert one.snapshot(2).states == handles[0].states


def test_state_ids_come_from_names_so_subtasks_agree_whatever_the_order(open_backend) -> None:
    first, second = open_backend(scope="op/0"), open_backend(scope="op/1")
    for descriptor in DESCRIPTORS.values():
        first.get_state(descriptor)
    for descriptor in reversed(DESCRIPTORS.values()):
        second.get_state(descriptor)
    assert first.snapshot(1).states == second.snapshot(1).states


def colliding_names() -> tuple[str, str]:
    """Two state names whose derived ids collide."""
    seen: dict[int, str] = {}
    for i in range(100_000):
        name = f"s{i}"
        other = seen.setdefault(new_state_id(name, set()), name)
        if other != name:
            return other, name
    raise AssertionError("no colliding names found")


def test_colliding_state_ids_registered_in_another_order_still_rescale(open_backend) -> None:
    a, b = colliding_names()
    handles = []
    for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, 2)):
        backend = open_backend(scope=f"op/{index}", key_group_range=key_groups)
        names = [a, b] if index == 0 else [b, a]
        states = [backend.get_state(ValueStateDescriptor(name)) for name in names]
        for key in keys_in(key_groups):
            backend.set_current_key(key)
            for name, state in zip(names, states, strict=True):
                state.update(f"{name}-{key}")
        handles.append(backend.snapshot(1))
    assert handles[0].states[a].state_id == handles[1].states[b].state_id
    (one,) = rescaled(open_backend, handles, 1)
    for name in (a, b):
        state = one.get_state(ValueStateDescriptor(name))
        values = {}
        for key in one.keys(name):
            one.set_current_key(key)
            values[key] = state.value()
        assert values == {key: f"{name}-{key}" for key in KEYS}


def local_files(config: BackendConfig) -> list[Path]:
    return [p for p in Path(config.local_dir).rglob("*") if p.is_file()]


def test_export_reads_a_key_range_and_leaves_nothing_behind(
    open_backend, config: BackendConfig, backend_name: str
) -> None:
    (handle,) = snapshots(open_backend, 1)
    fs, _ = filesystem(config.checkpoint_dir, config.storage_options)
    files = {path: fs.cat_file(path) for path in checkpoint_files(handle)}
    factory = store_factory(backend_name)
    context = StoreContext(
        scope="reader/0",
        key_group_range=KeyGroupRange.all(MAX_PARALLELISM),
        checkpoint_dir=config.checkpoint_dir,
        local_dir=config.local_dir,
        storage_options=config.storage_options,
    )
    before = local_files(config)
    start, end = key_group_prefix(10), key_group_prefix(20)
    entries = list(factory.export(context, handle["store"], start, end))
    assert entries == sorted(entries)
    assert {key[:2] for key, _ in entries} == {key_group_prefix(g) for g in range(10, 20)} & {
        key_group_prefix(key_group(k)) for k in KEYS
    }
    assert all(start <= key < end for key, _ in entries)
    # Stopped half-way, it cleans up too; and it changed no checkpoint file.
    reader = factory.export(context, handle["store"], b"", b"\xff")
    next(reader)
    reader.close()
    assert local_files(config) == before
    for path, data in files.items():
        assert fs.cat_file(path) == data
    # The snapshot still restores (export took nothing over).
    assert read(open_backend(restore=handle)) == expected(KEYS)


def test_a_store_releases_the_snapshots_of_old_subtasks(open_backend, config) -> None:
    two = snapshots(open_backend, 2)
    three = rescaled(open_backend, two, 3)
    kept = [backend.snapshot(2) for backend in three]
    # One new subtask releases each old handle (the runtime routes them).
    for handle in two:
        three[0].release(StateHandle.from_dict(handle), kept)
    fs, _ = filesystem(config.checkpoint_dir, config.storage_options)
    for handle in two:
        for path in checkpoint_files(handle):
            assert not fs.exists(path), path
    for handle in kept:
        for path in checkpoint_files(handle.to_dict()):
            assert fs.exists(path), path
    for backend in rescaled(open_backend, kept, 2):
        assert read(backend) == expected(keys_in(backend.key_group_range))
