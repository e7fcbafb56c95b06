"""Choosing a backend by name: the registry of store factories and `create_backend`.

Built-in backends are imported lazily, so `memory` works without loading RocksDB. Other packages
can add a backend with `register_backend`.
"""

import importlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from statebackend.backend import KeyedStateBackend, StateHandle
from statebackend.errors import InvalidHandleError, UnknownBackendError
from statebackend.keygroups import DEFAULT_MAX_PARALLELISM, KeyGroupRange
from statebackend.serializers import DEFAULT_SERIALIZER, Serializer
from statebackend.store import StoreContext, StoreFactory
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
    backend-specific settings.
    """

    name: str = "memory"
    checkpoint_dir: str = "memory://streamlet-checkpoints"
    local_dir: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "streamlet"))
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


def create_backend(
    config: BackendConfig,
    *,
    scope: str,
    key_group_range: KeyGroupRange | None = None,
    max_parallelism: int = DEFAULT_MAX_PARALLELISM,
    key_serializer: Serializer = DEFAULT_SERIALIZER,
    namespace_serializer: Serializer = DEFAULT_SERIALIZER,
    clock: Clock = system_clock,
    restore: StateHandle | Mapping[str, Any] | None = None,
) -> KeyedStateBackend:
    """Open the keyed state backend of one operator subtask, empty or restored from a handle.

    A failed restore raises a `RestoreError` subclass and leaves nothing behind.
    """
    factory = store_factory(config.name)
    key_groups = key_group_range or KeyGroupRange.all(max_parallelism)
    handle = None
    if restore is not None:
        handle = restore if isinstance(restore, StateHandle) else StateHandle.from_dict(restore)
        _check_compatible(handle, config.name, max_parallelism, key_groups)
    context = StoreContext(
        scope=scope,
        key_group_range=key_groups,
        checkpoint_dir=config.checkpoint_dir,
        local_dir=config.local_dir,
        storage_options=config.storage_options,
        options=config.options,
        clock=clock,
    )
    store = factory.open(context, None if handle is None else handle.store)
    return KeyedStateBackend(
        store,
        backend_name=config.name,
        scope=scope,
        key_group_range=key_groups,
        max_parallelism=max_parallelism,
        key_serializer=key_serializer,
        namespace_serializer=namespace_serializer,
        clock=clock,
        states=None if handle is None else handle.states,
    )


def _check_compatible(
    handle: StateHandle, backend: str, max_parallelism: int, key_groups: KeyGroupRange
) -> None:
    if handle.backend != backend:
        raise InvalidHandleError(
            f"the handle is a snapshot of the {handle.backend!r} backend, not {backend!r}"
        )
    if handle.max_parallelism != max_parallelism:
        raise InvalidHandleError(
            f"the handle was taken with max_parallelism {handle.max_parallelism}, "
            f"not {max_parallelism}"
        )
    if handle.key_group_range != key_groups:
        raise InvalidHandleError(
            f"the handle covers key groups {handle.key_group_range.start}.."
            f"{handle.key_group_range.end}, not {key_groups.start}..{key_groups.end}"
        )
