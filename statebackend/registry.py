"""Choosing a backend by name: the registry of store factories and `create_backend`.

Built-in backends are imported lazily, so `memory` works without loading RocksDB. Other packages
can add a backend with `register_backend`.

`create_backend` also restores: from one snapshot of the same key groups, or (a rescale) from the
snapshots of the old subtasks whose key groups overlap the new subtask's, checking that they cover
them exactly and merging their registered states by name; and from canonical savepoints
(`statebackend.canonical`) into any backend, at any parallelism: a new empty store filled with
their entries of its key groups.

`dispose_savepoint` lets a backend give up what a native savepoint of it references outside the
savepoint's directory (the optional `StoreFactory.dispose_savepoint`), before the directory is
deleted.
"""

import importlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from statebackend import canonical
from statebackend.backend import KeyedStateBackend, StateHandle, StateMeta, new_state_id
from statebackend.cache import DEFAULT_CACHE_BYTES
from statebackend.errors import InvalidHandleError, RestoreError, UnknownBackendError
from statebackend.keygroups import DEFAULT_MAX_PARALLELISM, KeyGroupRange
from statebackend.serializers import DEFAULT_SERIALIZER, Serializer
from statebackend.store import KvStore, RescaleSource, StoreContext, StoreFactory, key_range
from statebackend.ttl import Clock, system_clock

_BUILT_IN = {
    "memory": "statebackend.memory:MemoryStoreFactory",
    "rocksdb": "statebackend.rocksdb:RocksDBStoreFactory",
    "lsm": "statebackend.lsm.backend:LsmStoreFactory",
}
_registered: dict[str, StoreFactory] = {}


def register_backend(factory: StoreFactory) -> None:
    """Make `factory` available under `factory.name`."""
    _registered[factory.name] = factory


def backend_names() -> list[str]:
    return sorted({*_BUILT_IN, *_registered})


def store_factory(name: str) -> StoreFactory:
    """The factory registered as `name`; `UnknownBackendError` lists the known names."""
    if name not in _registered:
        if name not in _BUILT_IN:
            raise UnknownBackendError(
                f"unknown state backend {name!r}; known backends: {', '.join(backend_names())}"
            )
        module_name, class_name = _BUILT_IN[name].split(":")
        _registered[name] = getattr(importlib.import_module(module_name), class_name)()
    return _registered[name]


@dataclass(frozen=True)
class BackendConfig:
    """Which backend to use and where it keeps its files.

    `checkpoint_dir` is an fsspec URL (`file://`, `memory://`, `s3://`...) for snapshots;
    `local_dir` is a local working directory (for backends that need one); `options` are
    backend-specific settings; `cache_bytes` bounds the state cache of decoded values in front
    of every backend's store (`statebackend.cache`).
    """

    name: str = "memory"
    checkpoint_dir: str = "memory://streamlet-checkpoints"
    local_dir: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "streamlet"))
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    cache_bytes: int = DEFAULT_CACHE_BYTES


RestoreSource = StateHandle | Mapping[str, Any]
"""A snapshot to restore: a `StateHandle` or its `to_dict()`."""


def create_backend(
    config: BackendConfig,
    *,
    scope: str,
    key_group_range: KeyGroupRange | None = None,
    max_parallelism: int = DEFAULT_MAX_PARALLELISM,
    key_serializer: Serializer = DEFAULT_SERIALIZER,
    namespace_serializer: Serializer = DEFAULT_SERIALIZER,
    clock: Clock = system_clock,
    restore: RestoreSource | Sequence[RestoreSource] | None = None,
) -> KeyedStateBackend:
    """Open the keyed state backend of one operator subtask: empty, restored from one snapshot of
    the same key groups, or restored from the snapshots of another parallelism (a rescale).

    `restore` is None, one handle, or a sequence of handles. Every handle must be of this backend
    and this `max_parallelism`. A rescale is a sequence, or one handle of other key groups: the
    handles whose key groups overlap `key_group_range` must together cover it exactly (the others
    are ignored), and the backend holds their entries of its key groups. A failed restore raises a
    `RestoreError` subclass naming the problem and leaves nothing behind.
    """
    factory = store_factory(config.name)
    key_groups = key_group_range or KeyGroupRange.all(max_parallelism)
    context = StoreContext(
        scope=scope,
        key_group_range=key_groups,
        checkpoint_dir=config.checkpoint_dir,
        local_dir=config.local_dir,
        storage_options=config.storage_options,
        options=config.options,
        clock=clock,
    )
    states: Mapping[str, StateMeta] | None = None
    if restore is None:
        store = factory.open(context, None)
    else:
        handles = _parse_handles(restore)
        for handle in handles:
            _check_compatible(handle, config.name, max_parallelism)
        formats = {handle.backend == canonical.CANONICAL for handle in handles}
        if formats == {True}:
            store, states = _open_rescaled(factory, context, handles, from_canonical=True)
        elif len(formats) > 1:
            raise InvalidHandleError(
                "cannot restore canonical savepoints and native snapshots together"
            )
        elif len(handles) == 1 and handles[0].key_group_range == key_groups:
            store, states = factory.open(context, handles[0].store), handles[0].states
        else:
            store, states = _open_rescaled(factory, context, handles, from_canonical=False)
    return KeyedStateBackend(
        store,
        backend_name=config.name,
        scope=scope,
        key_group_range=key_groups,
        max_parallelism=max_parallelism,
        key_serializer=key_serializer,
        namespace_serializer=namespace_serializer,
        clock=clock,
        states=states,
        storage_options=config.storage_options,
        cache_bytes=config.cache_bytes,
    )


def _parse_handles(restore: RestoreSource | Sequence[RestoreSource]) -> list[StateHandle]:
    if isinstance(restore, StateHandle | Mapping):
        restore = [restore]
    elif not isinstance(restore, Sequence) or isinstance(restore, str | bytes):
        raise InvalidHandleError(
            f"restore takes a state handle or a list of them, got {type(restore).__name__}"
        )
    return [h if isinstance(h, StateHandle) else StateHandle.from_dict(h) for h in restore]


def _check_compatible(handle: StateHandle, backend: str, max_parallelism: int) -> None:
    if handle.backend not in (backend, canonical.CANONICAL):
        raise InvalidHandleError(
            f"the handle of {handle.scope} is a snapshot of the {handle.backend!r} backend, "
            f"not {backend!r}"
        )
    if handle.max_parallelism != max_parallelism:
        raise InvalidHandleError(
            f"the handle of {handle.scope} was taken with max_parallelism "
            f"{handle.max_parallelism}, not {max_parallelism}"
        )


Export = Callable[[StateHandle, bytes, bytes], Iterator[tuple[bytes, bytes]]]
"""The entries of a snapshot in a key range (`StoreFactory.export`, or a canonical file's)."""


def _open_rescaled(
    factory: StoreFactory, context: StoreContext, handles: list[StateHandle], from_canonical: bool
) -> tuple[KvStore, dict[str, StateMeta]]:
    """A store of `context`'s key groups from the snapshots of other key-group ranges, or from
    canonical savepoints.

    When the snapshots agree on every state's id, their entries are taken as they are (natively
    with the factory's `open_rescaled`, else copied with `export`); otherwise (snapshots with ids
    of an older numbering) the entries are copied with their state ids renumbered.
    """
    target = context.key_group_range
    used = [h for h in handles if h.key_group_range.intersection(target)]
    _check_coverage(handles, used, target)
    states, agreed = _merged_states(used)
    export = _export_of(factory, context, from_canonical)
    if agreed:
        open_rescaled = None if from_canonical else getattr(factory, "open_rescaled", None)
        if open_rescaled is not None:
            sources = [RescaleSource(h.store, h.key_group_range) for h in used]
            return open_rescaled(context, sources), states
        return _copy(factory, context, export, [(h, None) for h in used]), states
    renumbered = _renumbered(states)
    parts = [
        (
            h,
            {
                meta.state_id.to_bytes(2, "big"): renumbered[name].state_id.to_bytes(2, "big")
                for name, meta in h.states.items()
            },
        )
        for h in used
    ]
    return _copy(factory, context, export, parts), renumbered


def _export_of(factory: StoreFactory, context: StoreContext, from_canonical: bool) -> Export:
    if from_canonical:
        options = context.storage_options
        return lambda handle, start, end: canonical.export(handle.store, start, end, options)
    export = getattr(factory, "export", None)
    if export is None:
        raise RestoreError(
            f"the {factory.name!r} backend cannot restore snapshots of other key groups: "
            "it cannot export a snapshot's entries"
        )
    return lambda handle, start, end: export(context, handle.store, start, end)


def _check_coverage(
    handles: list[StateHandle], used: list[StateHandle], target: KeyGroupRange
) -> None:
    """The `used` handles (those overlapping `target`) must cover it, each key group once."""
    owner: dict[int, StateHandle] = {}
    for handle in used:
        for key_group in handle.key_group_range.intersection(target):
            other = owner.setdefault(key_group, handle)
            if other is not handle:
                raise InvalidHandleError(
                    f"key group {key_group} is in two restored snapshots: {other.scope} "
                    f"(checkpoint {other.checkpoint_id}) and {handle.scope} (checkpoint "
                    f"{handle.checkpoint_id})"
                )
    missing = [key_group for key_group in target if key_group not in owner]
    if missing:
        covered = [g for h in handles for g in h.key_group_range]
        raise InvalidHandleError(
            f"the restored snapshots hold key groups {_describe(covered)}, which leaves key "
            f"groups {_describe(missing)} of {target.start}..{target.end} without state"
        )


def _describe(key_groups: list[int]) -> str:
    """`0..5, 9, 12..20`: sorted key groups as ranges."""
    if not key_groups:
        return "none"
    runs: list[list[int]] = []
    for key_group in sorted(set(key_groups)):
        if runs and key_group == runs[-1][1] + 1:
            runs[-1][1] = key_group
        else:
            runs.append([key_group, key_group])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


def _merged_states(handles: list[StateHandle]) -> tuple[dict[str, StateMeta], bool]:
    """The states of all `handles` by name, and whether the handles agree on their ids."""
    merged: dict[str, StateMeta] = {}
    names: dict[int, str] = {}
    agreed = True
    for handle in handles:
        for name, meta in handle.states.items():
            known = merged.setdefault(name, meta)
            if (known.kind, known.ttl) != (meta.kind, meta.ttl):
                raise InvalidHandleError(
                    f"state '{name}' is a {known.describe()} in one restored snapshot and a "
                    f"{meta.describe()} in that of {handle.scope}"
                )
            if known.state_id != meta.state_id or names.setdefault(meta.state_id, name) != name:
                agreed = False
    return merged, agreed


def _renumbered(states: Mapping[str, StateMeta]) -> dict[str, StateMeta]:
    """The states with the ids a new backend gives them (in name order, for collisions)."""
    taken: set[int] = set()
    renumbered = {}
    for name in sorted(states):
        state_id = new_state_id(name, taken)
        taken.add(state_id)
        renumbered[name] = replace(states[name], state_id=state_id)
    return renumbered


def _copy(
    factory: StoreFactory,
    context: StoreContext,
    export: Export,
    parts: list[tuple[StateHandle, dict[bytes, bytes] | None]],
) -> KvStore:
    """A new store filled with each handle's entries in `context`'s key groups, their state ids
    (bytes 2..4 of a physical key) mapped when a part has a mapping."""
    store = factory.open(context, None)
    try:
        for handle, ids in parts:
            start, end = key_range(handle.key_group_range, context.key_group_range)
            for key, value in export(handle, start, end):
                if ids is not None:
                    state_id = ids.get(key[2:4])
                    if state_id is None:
                        raise InvalidHandleError(
                            f"the snapshot of {handle.scope} holds entries of state id "
                            f"{int.from_bytes(key[2:4], 'big')}, which it does not name"
                        )
                    key = key[:2] + state_id + key[4:]
                store.put(key, value)
    except BaseException:
        store.dispose()
        raise
    return store


def dispose_savepoint(config: BackendConfig, handle: RestoreSource) -> None:
    """Let the backend of a native savepoint's handle give up what the savepoint references
    outside its directory (only a backend that shares files with it has anything to do: its
    factory's optional `dispose_savepoint(context, store handle)`); a canonical handle has
    nothing outside. The caller then deletes the savepoint's directory."""
    parsed = handle if isinstance(handle, StateHandle) else StateHandle.from_dict(handle)
    if parsed.backend == canonical.CANONICAL:
        return
    dispose = getattr(store_factory(parsed.backend), "dispose_savepoint", None)
    if dispose is None:
        return
    context = StoreContext(
        scope=parsed.scope,
        key_group_range=parsed.key_group_range,
        checkpoint_dir=config.checkpoint_dir,
        local_dir=config.local_dir,
        storage_options=config.storage_options,
        options=config.options,
    )
    dispose(context, parsed.store)
