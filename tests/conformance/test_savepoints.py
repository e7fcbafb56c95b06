"""Conformance: savepoints of a keyed state backend.

- `canonical` (every backend): the entries of the store's scan in one file that every backend
  restores, also at another parallelism, whatever the state type, namespace or TTL; relocatable
  (written relative to the savepoint's directory, read from wherever it was moved); a damaged or
  missing file is refused with nothing left behind.
- `native`: the store's own format in the savepoint's directory (for `lsm`, its pinned manifest;
  the tables stay in place, pinned until the savepoint is disposed of): releasing every
  checkpoint of the job (also those of a store restored from the savepoint) leaves it whole.
(A backend without native savepoints, disposal and relative paths: tests/backends/
test_savepoint_layer.py.)
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from statebackend import (
    BackendConfig,
    CorruptCheckpointError,
    InvalidHandleError,
    MissingCheckpointDataError,
    create_backend,
    dfs,
)
from tests.conformance.conftest import VARIANTS, ManualClock, OpenBackend, subtask_ranges
from tests.conformance.test_rescale import (
    DESCRIPTORS,
    KEYS,
    MAX_PARALLELISM,
    TTL,
    expected,
    fill,
    keys_in,
    read,
)
from tests.support.checkpoints import referenced_files

FILE_BACKENDS = [name for name, (_, storage) in VARIANTS.items() if storage == "file"]


def savepoints(
    open_backend: OpenBackend, parallelism: int, directory: str, format: str
) -> list[dict[str, Any]]:
    """Savepoints (as their metadata records them: relative to `directory`) of `parallelism`
    filled subtask backends."""
    handles = []
    for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, parallelism)):
        backend = open_backend(scope=f"op/{index}", key_group_range=key_groups)
        fill(backend, keys_in(key_groups))
        handle = backend.savepoint(1, dfs.join(directory, "op", str(index)), format)
        handles.append(dfs.relativize(json.loads(json.dumps(handle.to_dict())), directory))
    return handles


def local(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def test_a_canonical_savepoint_restores_into_its_backend_at_another_parallelism(
    open_backend: OpenBackend, config: BackendConfig, clock: ManualClock
) -> None:
    directory = dfs.join(config.checkpoint_dir, "savepoint")
    handles = savepoints(open_backend, 2, directory, "canonical")
    assert {handle["backend"] for handle in handles} == {"canonical"}
    assert all(dfs.is_relative(path) for path in referenced_files(handles))
    resolved = dfs.resolve(handles, directory)
    for key_groups in subtask_ranges(MAX_PARALLELISM, 3):
        backend = open_backend(scope="new", key_group_range=key_groups, restore=resolved)
        assert read(backend) == expected(keys_in(key_groups))
    one = open_backend(scope="one", restore=resolved)
    clock.advance(TTL.ttl_ms)  # entries keep their expiry time
    one.set_current_key(KEYS[0])
    assert one.get_state(DESCRIPTORS["expiring"]).value() is None
    assert one.get_state(DESCRIPTORS["value"]).value() == f"v-{KEYS[0]}"


@pytest.mark.parametrize("target", FILE_BACKENDS)
@pytest.mark.parametrize("variant", FILE_BACKENDS)
def test_a_moved_canonical_savepoint_restores_into_every_backend(
    open_backend: OpenBackend, backend_name: str, tmp_path: Path, target: str
) -> None:
    written = (tmp_path / "written").as_uri()
    handles = savepoints(open_backend, 3, written, "canonical")
    assert {h["store"]["written_by"] for h in handles} == {backend_name}
    shutil.move(tmp_path / "written", tmp_path / "moved")
    resolved = dfs.resolve(handles, (tmp_path / "moved").as_uri())
    other = BackendConfig(
        target, checkpoint_dir=(tmp_path / "target").as_uri(), local_dir=str(tmp_path / "tl")
    )
    for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, 2)):
        restored = open_backend(
            config=other, scope=f"op/{index}", key_group_range=key_groups, restore=resolved
        )
        assert restored.backend_name == target
        assert read(restored) == expected(keys_in(key_groups))
        # It snapshots and restores in its own backend like any other.
        again = open_backend(
            config=other,
            scope=f"again/{index}",
            key_group_range=key_groups,
            restore=restored.snapshot(2),
        )
        assert read(again) == expected(keys_in(key_groups))


@pytest.mark.parametrize("variant", ["memory", "rocksdb"])
def test_a_damaged_or_missing_canonical_file_is_refused_leaving_nothing(
    open_backend: OpenBackend, config: BackendConfig, tmp_path: Path
) -> None:
    directory = (tmp_path / "savepoint").as_uri()
    (handle,) = dfs.resolve(savepoints(open_backend, 1, directory, "canonical"), directory)
    (path,) = referenced_files(handle)
    data = bytearray(local(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    local(path).write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match=r"savepoint file .*state\.canonical"):
        create_backend(config, scope="bad", restore=handle)
    local(path).unlink()
    with pytest.raises(MissingCheckpointDataError, match="is missing"):
        create_backend(config, scope="bad", restore=handle)
    assert not [path for path in (Path(config.local_dir) / "bad").rglob("*") if path.is_file()]
    native = open_backend(scope="native").snapshot(1)
    with pytest.raises(InvalidHandleError, match="canonical savepoints and native snapshots"):
        create_backend(config, scope="bad", restore=[handle, native])


@pytest.mark.parametrize("variant", ["memory", "rocksdb", "lsm"])
def test_a_native_savepoint_is_relocatable_and_no_release_touches_it(
    open_backend: OpenBackend, backend_name: str, tmp_path: Path
) -> None:
    written = (tmp_path / "written").as_uri()
    handles = savepoints(open_backend, 2, written, "native")
    assert {handle["backend"] for handle in handles} == {backend_name}
    files = referenced_files(handles)
    assert files and all(dfs.is_relative(path) for path in files)  # all in the savepoint
    shutil.move(tmp_path / "written", tmp_path / "moved")
    moved = (tmp_path / "moved").as_uri()
    resolved = dfs.resolve(handles, moved)
    sizes = {path: local(path).stat().st_size for path in referenced_files(resolved)}
    restored = [
        open_backend(scope=f"new/{index}", key_group_range=key_groups, restore=resolved)
        for index, key_groups in enumerate(subtask_ranges(MAX_PARALLELISM, 1 + len(handles)))
    ]
    for backend in restored:
        assert read(backend) == expected(keys_in(backend.key_group_range))
    # Restored at the same key groups: a store restored from a savepoint does not take its files
    # as its own, so releasing its checkpoints (from any store of the backend, as the runtime
    # does after a failover or a rescale) leaves the savepoint whole.
    key_groups = subtask_ranges(MAX_PARALLELISM, 2)[0]
    same = open_backend(scope="same/0", key_group_range=key_groups, restore=resolved[0])
    first, second = same.snapshot(2), same.snapshot(3)
    same.release(first, [second])
    assert read(same) == expected(keys_in(key_groups))
    other = open_backend(scope="other/0", key_group_range=key_groups)
    other.release(second, [])
    assert {path: local(path).stat().st_size for path in sizes} == sizes
    again = open_backend(scope="again/0", key_group_range=key_groups, restore=resolved[0])
    assert read(again) == expected(keys_in(key_groups))
