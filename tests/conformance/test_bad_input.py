"""Conformance: bad input raises a specific error naming the problem and changes nothing."""

import json

import pytest

from statebackend import (
    BackendConfig,
    CorruptCheckpointError,
    InvalidHandleError,
    KeyedStateBackend,
    ListStateDescriptor,
    MapStateDescriptor,
    MissingCheckpointDataError,
    SerializationError,
    StateTypeConflictError,
    TtlConfig,
    UnknownBackendError,
    ValueStateDescriptor,
    create_backend,
)
from statebackend.dfs import filesystem
from tests.conformance.conftest import checkpoint_files


class Opaque:
    pass


def test_unknown_backend_name() -> None:
    with pytest.raises(UnknownBackendError, match="'nosuch'.*memory.*rocksdb"):
        create_backend(BackendConfig("nosuch"), scope="op/0")


def test_unserializable_value_leaves_state_unchanged(backend: KeyedStateBackend) -> None:
    value = backend.get_state(ValueStateDescriptor("v"))
    items = backend.get_state(ListStateDescriptor("l"))
    mapped = backend.get_state(MapStateDescriptor("m"))
    backend.set_current_key("k")
    value.update("kept")
    items.add("kept")
    mapped.put("a", "kept")
    with pytest.raises(SerializationError, match="state 'v'.*Opaque"):
        value.update(Opaque())
    with pytest.raises(SerializationError, match="state 'l'.*Opaque"):
        items.add_all(["fine", Opaque()])
    with pytest.raises(SerializationError, match="state 'm'.*Opaque"):
        mapped.put_all({"b": "fine", "c": Opaque()})
    with pytest.raises(SerializationError, match="map key.*Opaque"):
        mapped.put(Opaque(), 1)
    with pytest.raises(SerializationError, match="key .*Opaque"):
        backend.set_current_key(Opaque())
    assert backend.current_key == "k"
    assert value.value() == "kept"
    assert items.get() == ["kept"]
    assert dict(mapped.items()) == {"a": "kept"}


def test_descriptor_of_another_type_under_existing_name(open_backend, backend) -> None:
    backend.get_state(ValueStateDescriptor("s"))
    with pytest.raises(StateTypeConflictError, match="'s' is a value state.*list state"):
        backend.get_state(ListStateDescriptor("s"))
    with pytest.raises(StateTypeConflictError, match="with TTL"):
        backend.get_state(ValueStateDescriptor("s", ttl=TtlConfig(10)))
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("s")).update(1)
    restored = open_backend(restore=backend.snapshot(1))
    with pytest.raises(StateTypeConflictError, match="'s' is a value state.*map state"):
        restored.get_state(MapStateDescriptor("s"))


def test_restore_from_missing_file(open_backend, backend: KeyedStateBackend, config) -> None:
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("v")).update(1)
    handle = backend.snapshot(1).to_dict()
    path = checkpoint_files(handle)[-1]
    fs, local = filesystem(path, config.storage_options)
    fs.rm(local)
    with pytest.raises(MissingCheckpointDataError, match="missing"):
        open_backend(restore=handle)


def test_restore_from_corrupted_file(open_backend, backend: KeyedStateBackend, config) -> None:
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("v")).update("x" * 1000)
    handle = backend.snapshot(1).to_dict()
    for path in checkpoint_files(handle):
        fs, local = filesystem(path, config.storage_options)
        data = bytearray(fs.cat_file(local))
        if data:
            data[len(data) // 2] ^= 0xFF
            fs.pipe_file(local, bytes(data))
    with pytest.raises(CorruptCheckpointError, match="corrupted"):
        open_backend(restore=handle)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: h.update(format=99), "format 99"),
        (lambda h: h.pop("states"), "malformed"),
        (lambda h: h.update(key_groups=[0, 63]), "key groups 0..63"),
        (lambda h: h.update(max_parallelism=64), "max_parallelism 64"),
        (lambda h: h.update(backend="other"), "'other' backend"),
        (lambda h: h.update(store={}), "malformed"),
        (lambda h: h["states"]["v"].update(kind="weird"), "unknown kind"),
    ],
)
def test_restore_from_malformed_handle(open_backend, backend, mutate, message) -> None:
    backend.set_current_key("k")
    backend.get_state(ValueStateDescriptor("v")).update(1)
    handle = json.loads(json.dumps(backend.snapshot(1).to_dict()))
    mutate(handle)
    with pytest.raises(InvalidHandleError, match=message):
        open_backend(restore=handle)


def test_restore_from_garbage(open_backend) -> None:
    with pytest.raises(InvalidHandleError):
        open_backend(restore=["not", "a", "handle"])
