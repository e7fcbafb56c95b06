"""Conformance: snapshots and restores, in this process and a fresh one; sizes and odd keys."""

import json
import os
import subprocess
import sys

import pytest

from statebackend import (
    KeyedStateBackend,
    ListStateDescriptor,
    MapStateDescriptor,
    ValueStateDescriptor,
)
from tests.conformance.conftest import PERSISTENT_VARIANTS

MiB = 1 << 20


def _fill(backend: KeyedStateBackend, tag: str) -> None:
    value = backend.get_state(ValueStateDescriptor("v"))
    items = backend.get_state(ListStateDescriptor("l"))
    mapped = backend.get_state(MapStateDescriptor("m"))
    for i in range(50):
        backend.set_current_key(f"key-{i}")
        value.update(f"{tag}-{i}")
        items.add_all([tag, i])
        mapped.put(tag, i)


def _read(backend: KeyedStateBackend) -> dict:
    value = backend.get_state(ValueStateDescriptor("v"))
    items = backend.get_state(ListStateDescriptor("l"))
    mapped = backend.get_state(MapStateDescriptor("m"))
    result = {}
    for key in backend.keys("v"):
        backend.set_current_key(key)
        result[key] = (value.value(), items.get(), dict(mapped.items()))
    return result


def test_restore_gives_exactly_the_snapshot(open_backend, backend: KeyedStateBackend) -> None:
    _fill(backend, "first")
    expected = _read(backend)
    handle = backend.snapshot(1)
    _fill(backend, "second")
    backend.set_current_key("after-snapshot")
    backend.get_state(ValueStateDescriptor("v")).update("new key")
    assert _read(backend) != expected
    restored = open_backend(restore=handle)
    assert _read(restored) == expected
    # The handle is plain data and restores as well after a JSON round trip.
    again = open_backend(restore=json.loads(json.dumps(handle.to_dict())))
    assert _read(again) == expected


def test_restored_backend_keeps_working_and_snapshots_again(open_backend, backend) -> None:
    _fill(backend, "first")
    restored = open_backend(restore=backend.snapshot(1))
    _fill(restored, "second")
    expected = _read(restored)
    third = open_backend(restore=restored.snapshot(2))
    assert _read(third) == expected


def test_successive_snapshots_each_restore_their_own_state(open_backend, backend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    handles = []
    for checkpoint in range(1, 5):
        for i in range(20):
            backend.set_current_key(i)
            state.update((checkpoint, i))
        handles.append(backend.snapshot(checkpoint))
    for checkpoint, handle in enumerate(handles, start=1):
        restored = open_backend(restore=handle)
        restored_state = restored.get_state(ValueStateDescriptor("v"))
        restored.set_current_key(7)
        assert restored_state.value() == (checkpoint, 7)


@pytest.mark.parametrize("variant", PERSISTENT_VARIANTS, indirect=True)
def test_restore_in_a_fresh_process(backend: KeyedStateBackend, config, tmp_path) -> None:
    _fill(backend, "first")
    expected = {k: list(map(_jsonable, v)) for k, v in _read(backend).items()}
    handle = backend.snapshot(1)
    _fill(backend, "second")
    script = f"""
import json, sys
from statebackend import BackendConfig, create_backend
from tests.conformance.test_snapshot import _read, _jsonable
config = BackendConfig({config.name!r}, checkpoint_dir={config.checkpoint_dir!r},
                       local_dir={str(tmp_path / "other-local")!r},
                       storage_options={dict(config.storage_options)!r})
backend = create_backend(config, scope="op/0", restore=json.load(sys.stdin))
print(json.dumps({{k: list(map(_jsonable, v)) for k, v in _read(backend).items()}}))
backend.dispose()
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(handle.to_dict()),
        capture_output=True,
        text=True,
        cwd=os.getcwd(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected


def _jsonable(value):
    return json.loads(json.dumps(value))


def test_large_values(open_backend, backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("blob"))
    items = backend.get_state(ListStateDescriptor("blobs"))
    big = os.urandom(3 * MiB)
    backend.set_current_key("big")
    state.update(big)
    items.add_all([big[:MiB], big[MiB:]])
    restored = open_backend(restore=backend.snapshot(1))
    restored.set_current_key("big")
    assert restored.get_state(ValueStateDescriptor("blob")).value() == big
    assert restored.get_state(ListStateDescriptor("blobs")).get() == [big[:MiB], big[MiB:]]


def test_empty_and_non_ascii_keys_and_values(open_backend, backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    mapped = backend.get_state(MapStateDescriptor("m"))
    cases = {"": "", b"": b"", "ключ": "значение", "鍵🔑": "値", "\x00\x01": "\x00", 0: 0}
    for key, value in cases.items():
        backend.set_current_key(key)
        state.update(value)
        mapped.put("", value)
        mapped.put("ü", key)
    restored = open_backend(restore=backend.snapshot(1))
    restored_state = restored.get_state(ValueStateDescriptor("v"))
    restored_map = restored.get_state(MapStateDescriptor("m"))
    for key, value in cases.items():
        restored.set_current_key(key)
        assert restored_state.value() == value
        assert dict(restored_map.items()) == {"": value, "ü": key}
    assert sorted(restored.keys("v"), key=repr) == sorted(cases, key=repr)


def test_hundred_thousand_keys(open_backend, backend: KeyedStateBackend) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    n = 100_000
    for i in range(n):
        backend.set_current_key(i)
        state.update(i * 3)
    restored = open_backend(restore=backend.snapshot(1))
    restored_state = restored.get_state(ValueStateDescriptor("v"))
    count = 0
    for key in restored.keys("v"):
        restored.set_current_key(key)
        assert restored_state.value() == key * 3
        count += 1
    assert count == n
