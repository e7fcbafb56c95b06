"""Conformance: releasing snapshots that fall out of retention."""

from statebackend import KeyedStateBackend, ValueStateDescriptor
from statebackend.dfs import filesystem
from tests.conformance.conftest import checkpoint_files


def _exists(path: str) -> bool:
    fs, local = filesystem(path, {})
    return fs.exists(local)


def _write(backend: KeyedStateBackend, round_: int) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    for i in range(200):
        backend.set_current_key(i)
        state.update((round_, i))


def _value_of(backend: KeyedStateBackend, key: int):
    backend.set_current_key(key)
    return backend.get_state(ValueStateDescriptor("v")).value()


def test_release_keeps_retained_snapshots_and_the_live_state(open_backend, backend) -> None:
    handles = []
    for round_ in range(1, 4):
        _write(backend, round_)
        handles.append(backend.snapshot(round_))
    first, *retained = handles
    backend.release(first, retained)
    backend.release(first, retained)  # idempotent
    kept = {path for handle in retained for path in checkpoint_files(handle.to_dict())}
    for path in checkpoint_files(first.to_dict()):
        assert _exists(path) == (path in kept), path
    for path in kept:
        assert _exists(path), path
    for round_, handle in enumerate(retained, start=2):
        assert _value_of(open_backend(restore=handle), 7) == (round_, 7)
    # The live backend still snapshots and restores after the release.
    _write(backend, 4)
    fourth = backend.snapshot(4)
    backend.release(handles[1], [handles[2], fourth])
    assert _value_of(open_backend(restore=fourth), 7) == (4, 7)
    assert _value_of(open_backend(restore=handles[2]), 7) == (3, 7)
