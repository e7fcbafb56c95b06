"""Conformance: releasing snapshots that fall out of retention.

What a release deletes, and when (at once, or by a garbage collector after a grace period), is the
backend's business and tested with each backend; here: nothing that is retained or live is lost.
"""

from statebackend import KeyedStateBackend, ValueStateDescriptor
from statebackend.dfs import filesystem
from tests.conformance.conftest import checkpoint_files


def _exists(path: str, storage_options) -> bool:
    fs, local = filesystem(path, storage_options)
    return fs.exists(local)


def _write(backend: KeyedStateBackend, round_: int) -> None:
    state = backend.get_state(ValueStateDescriptor("v"))
    for i in range(200):
        backend.set_current_key(i)
        state.update((round_, i))


def _value_of(backend: KeyedStateBackend, key: int):
    backend.set_current_key(key)
    return backend.get_state(ValueStateDescriptor("v")).value()


def test_release_keeps_retained_snapshots_and_the_live_state(open_backend, backend, config) -> None:
    handles = []
    for round_ in range(1, 4):
        _write(backend, round_)
        handles.append(backend.snapshot(round_))
    first, second, third = handles
    backend.release(first, [second, third])
    backend.release(first, [second, third])  # idempotent
    # The live backend still writes, snapshots and releases after the release.
    _write(backend, 4)
    fourth = backend.snapshot(4)
    backend.release(second, [third, fourth])
    for path in checkpoint_files(third.to_dict()) + checkpoint_files(fourth.to_dict()):
        assert _exists(path, config.storage_options), path
    # Restoring takes a backend's files over (a zombie writer is fenced), so restore last.
    assert _value_of(open_backend(restore=fourth), 7) == (4, 7)
    assert _value_of(open_backend(restore=third), 7) == (3, 7)
