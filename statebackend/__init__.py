"""Keyed state for streamlet operators, over pluggable backends.

A backend is chosen by name (`memory`, `rocksdb`, `lsm`) through `BackendConfig` and
`create_backend`; every backend serves the same state types through the same handles and passes the
same conformance suite (`tests/conformance`). This package imports nothing from `streamlet` or
`compaction_service`.
"""

from statebackend.backend import KeyedStateBackend, StateHandle, StateMeta
from statebackend.descriptors import (
    AggregateFunction,
    AggregatingStateDescriptor,
    ListStateDescriptor,
    MapStateDescriptor,
    ReducingStateDescriptor,
    StateDescriptor,
    ValueStateDescriptor,
)
from statebackend.errors import (
    CompactionError,
    CorruptCheckpointError,
    InvalidHandleError,
    KeyGroupOutOfRangeError,
    MissingCheckpointDataError,
    NoCurrentKeyError,
    RestoreError,
    SerializationError,
    StateError,
    StateTypeConflictError,
    UnknownBackendError,
)
from statebackend.keygroups import DEFAULT_MAX_PARALLELISM, KeyGroupRange, key_group_of
from statebackend.registry import BackendConfig, backend_names, create_backend, register_backend
from statebackend.serializers import MsgpackSerializer, PickleSerializer, Serializer
from statebackend.state import AggregatingState, ListState, MapState, ReducingState, ValueState
from statebackend.ttl import TtlConfig, TtlUpdate

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "AggregateFunction",
    "AggregatingState",
    "AggregatingStateDescriptor",
    "BackendConfig",
    "CompactionError",
    "CorruptCheckpointError",
    "InvalidHandleError",
    "KeyGroupOutOfRangeError",
    "KeyGroupRange",
    "KeyedStateBackend",
    "ListState",
    "ListStateDescriptor",
    "MapState",
    "MapStateDescriptor",
    "MissingCheckpointDataError",
    "MsgpackSerializer",
    "NoCurrentKeyError",
    "PickleSerializer",
    "ReducingState",
    "ReducingStateDescriptor",
    "RestoreError",
    "SerializationError",
    "Serializer",
    "StateDescriptor",
    "StateError",
    "StateHandle",
    "StateMeta",
    "StateTypeConflictError",
    "TtlConfig",
    "TtlUpdate",
    "UnknownBackendError",
    "ValueState",
    "ValueStateDescriptor",
    "backend_names",
    "create_backend",
    "key_group_of",
    "register_backend",
]
