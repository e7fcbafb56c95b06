"""The keyed state backend of one operator subtask, and its snapshot handle.

A `KeyedStateBackend` owns the state of the key groups in its `KeyGroupRange`: it turns the current
key into the physical key prefix (`statebackend.layout`), hands out state handles by descriptor,
iterates the keys of a state, and snapshots to / restores from a small `StateHandle`.

A state's id (two bytes of every physical key) is derived from its name (`new_state_id`), so the
subtasks of an operator agree on it and a rescale can combine their snapshots as they are; a
snapshot records `name -> id`, and a restore keeps the recorded ids.

A savepoint (`savepoint(checkpoint_id, directory, format)`) writes the state into a directory the
user owns: `native`, the store's own format (`KvStore.savepoint`), or `canonical`, the entries of
the store's `scan` in a file any backend restores (`statebackend.canonical`).

>>> from statebackend import BackendConfig, ValueStateDescriptor, create_backend
>>> backend = create_backend(BackendConfig("memory", checkpoint_dir="memory://doc"), scope="op/0")
>>> count = backend.get_state(ValueStateDescriptor("count", default=0))
>>> for word in ["a", "b", "a"]:
...     backend.set_current_key(word)
...     count.update(count.value() + 1)
>>> backend.set_current_key("a"); count.value()
2
>>> backend.dispose()
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash

from statebackend import canonical, dfs
from statebackend.descriptors import StateDescriptor
from statebackend.errors import (
    InvalidHandleError,
    KeyGroupOutOfRangeError,
    NoCurrentKeyError,
    SerializationError,
    StateError,
    StateTypeConflictError,
)
from statebackend.keygroups import KeyGroupRange, key_group_of
from statebackend.layout import EMPTY_COMPONENT, escape, prefix_end, state_prefix, unescape_prefix
from statebackend.serializers import Serializer, failure_reason
from statebackend.state import STATE_CLASSES, KeyedState
from statebackend.store import KvStore, StoreHandle, key_range
from statebackend.ttl import Clock, is_expired

HANDLE_FORMAT = 1
CANONICAL = canonical.CANONICAL
SAVEPOINT_FORMATS = ("native", CANONICAL)
# State ids are 1..0xFFFE (two bytes of the physical key; 0 and 0xFFFF are never used).
_MAX_STATE_ID = 0xFFFE


def new_state_id(name: str, taken: set[int]) -> int:
    """The id of a new state named `name`: derived from the name, so that every subtask of an
    operator gives a state the same id (a rescale can then take their entries as they are); on a
    collision, the next id that is not `taken`."""
    if len(taken) >= _MAX_STATE_ID:
        raise StateError(f"too many states in one backend (at most {_MAX_STATE_ID})")
    state_id = 1 + xxhash.xxh32_intdigest(name.encode()) % _MAX_STATE_ID
    while state_id in taken:
        state_id = state_id % _MAX_STATE_ID + 1
    return state_id


@dataclass(frozen=True)
class StateMeta:
    """What a snapshot records of each registered state."""

    state_id: int
    kind: str
    ttl: bool

    def describe(self) -> str:
        return f"{self.kind} state{' with TTL' if self.ttl else ''}"

    def check(self, descriptor: StateDescriptor) -> None:
        """Raise `StateTypeConflictError` unless `descriptor` (of this state's name) fits."""
        asked = StateMeta(self.state_id, descriptor.kind, descriptor.ttl_config is not None)
        if asked != self:
            raise StateTypeConflictError(
                f"state '{descriptor.name}' is a {self.describe()}; it cannot be used as a "
                f"{asked.describe()}"
            )


@dataclass(frozen=True)
class StateHandle:
    """A small, serializable reference to one subtask's snapshot (the files live on the DFS)."""

    backend: str
    scope: str
    checkpoint_id: int
    max_parallelism: int
    key_group_range: KeyGroupRange
    states: Mapping[str, StateMeta]
    store: StoreHandle

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HANDLE_FORMAT,
            "backend": self.backend,
            "scope": self.scope,
            "checkpoint_id": self.checkpoint_id,
            "max_parallelism": self.max_parallelism,
            "key_groups": [self.key_group_range.start, self.key_group_range.end],
            "states": {
                name: {"id": m.state_id, "kind": m.kind, "ttl": m.ttl}
                for name, m in self.states.items()
            },
            "store": self.store,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "StateHandle":
        """Parse a handle, raising `InvalidHandleError` that names the bad field."""
        if not isinstance(data, Mapping):
            raise InvalidHandleError(f"a state handle must be a mapping, got {type(data).__name__}")
        if data.get("format") != HANDLE_FORMAT:
            raise InvalidHandleError(
                f"unsupported state handle format {data.get('format')!r} (expected {HANDLE_FORMAT})"
            )
        try:
            states = {
                str(name): StateMeta(int(m["id"]), str(m["kind"]), bool(m["ttl"]))
                for name, m in data["states"].items()
            }
            start, end = data["key_groups"]
            handle = cls(
                backend=str(data["backend"]),
                scope=str(data["scope"]),
                checkpoint_id=int(data["checkpoint_id"]),
                max_parallelism=int(data["max_parallelism"]),
                key_group_range=KeyGroupRange(int(start), int(end)),
                states=states,
                store=dict(data["store"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidHandleError(f"malformed state handle: {type(e).__name__}: {e}") from e
        ids: dict[int, str] = {}
        for name, meta in states.items():
            if meta.kind not in STATE_CLASSES:
                raise InvalidHandleError(f"state '{name}' has unknown kind {meta.kind!r}")
            if not 1 <= meta.state_id <= 0xFFFF:
                raise InvalidHandleError(f"state '{name}' has an invalid id {meta.state_id}")
            other = ids.setdefault(meta.state_id, name)
            if other != name:
                raise InvalidHandleError(
                    f"states '{other}' and '{name}' have the same id {meta.state_id}"
                )
        return handle


class KeyedStateBackend:
    """Keyed state of one operator subtask over an ordered byte store."""

    def __init__(
        self,
        store: KvStore,
        *,
        backend_name: str,
        scope: str,
        key_group_range: KeyGroupRange,
        max_parallelism: int,
        key_serializer: Serializer,
        namespace_serializer: Serializer,
        clock: Clock,
        states: Mapping[str, StateMeta] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ):
        self.store = store
        self.backend_name = backend_name
        self.scope = scope
        self.key_group_range = key_group_range
        self.max_parallelism = max_parallelism
        self.key_serializer = key_serializer
        self.namespace_serializer = namespace_serializer
        self.clock = clock
        self.storage_options = dict(storage_options or {})
        self._metas: dict[str, StateMeta] = dict(states or {})
        self._state_ids = {meta.state_id for meta in self._metas.values()}
        self._handles: dict[str, KeyedState] = {}
        self._current_key: Any = None
        # The physical-key prefix of the current key, read by every state handle.
        self.current_key_group = b""
        self.current_key_part: bytes | None = None

    # -- the current key ---------------------------------------------------------------------

    def set_current_key(self, key: Any) -> None:
        """Make `key` the key that every state handle of this backend reads and writes."""
        try:
            key_bytes = self.key_serializer.serialize(key)
        except Exception as e:
            raise SerializationError(
                f"cannot serialize the key {key!r:.100}: {failure_reason(key, e)}"
            ) from (e.__cause__ if isinstance(e, SerializationError) else e)
        key_group = key_group_of(key_bytes, self.max_parallelism)
        if key_group not in self.key_group_range:
            raise KeyGroupOutOfRangeError(
                f"key {key!r} is in key group {key_group}, outside this subtask's key groups "
                f"{self.key_group_range.start}..{self.key_group_range.end}"
            )
        self._current_key = key
        self.current_key_group = key_group.to_bytes(2, "big")
        self.current_key_part = escape(key_bytes)

    @property
    def current_key(self) -> Any:
        return self._current_key

    # -- states --------------------------------------------------------------------------------

    def get_state(self, descriptor: StateDescriptor) -> Any:
        """The handle of `descriptor`'s state (one per name; the same object on every call)."""
        handle = self._handles.get(descriptor.name)
        meta = self._metas.get(descriptor.name)
        if meta is not None:
            meta.check(descriptor)
        if handle is not None:
            return handle
        if meta is None:
            state_id = new_state_id(descriptor.name, self._state_ids)
            meta = StateMeta(state_id, descriptor.kind, descriptor.ttl_config is not None)
            self._state_ids.add(state_id)
        handle = STATE_CLASSES[descriptor.kind](self, meta.state_id, descriptor)  # type: ignore[arg-type]
        self._metas[descriptor.name] = meta
        self._handles[descriptor.name] = handle
        return handle

    def key_prefix(self, state_name: str) -> bytes:
        """The physical key of the current key in `state_name` (default namespace).

        A value's entry has exactly this key; a map's entries start with it.
        """
        meta = self._metas.get(state_name)
        if meta is None:
            raise StateError(f"no state named '{state_name}' in this backend")
        if self.current_key_part is None:
            raise NoCurrentKeyError("key_prefix() called before set_current_key()")
        return (
            self.current_key_group
            + meta.state_id.to_bytes(2, "big")
            + self.current_key_part
            + EMPTY_COMPONENT
        )

    @property
    def state_names(self) -> list[str]:
        return sorted(self._metas)

    def keys(self, state_name: str, namespace: Any = None) -> Iterator[Any]:
        """Every key that has a live entry in `state_name` (and `namespace`), each once.

        Keys come in key-group order, then in the byte order of their serialized form. The keys are
        those present when the iteration of each key group starts; the current key may be changed
        and state written while iterating.
        """
        meta = self._metas.get(state_name)
        if meta is None:
            raise StateError(f"no state named '{state_name}' in this backend")
        namespace_part = (
            EMPTY_COMPONENT
            if namespace is None
            else escape(self.namespace_serializer.serialize(namespace))
        )
        for key_group in self.key_group_range:
            prefix = state_prefix(key_group, meta.state_id)
            previous = None
            now = self.clock()
            for physical, stored in self.store.scan(prefix, prefix_end(prefix)):
                key_part, offset = unescape_prefix(physical, len(prefix))
                if key_part == previous or not physical.startswith(namespace_part, offset):
                    continue
                if is_expired(stored, now):
                    continue
                previous = key_part
                yield self.key_serializer.deserialize(key_part)

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot(self, checkpoint_id: int) -> StateHandle:
        """Persist the state to checkpoint storage; the handle restores exactly this state."""
        return StateHandle(
            backend=self.backend_name,
            scope=self.scope,
            checkpoint_id=checkpoint_id,
            max_parallelism=self.max_parallelism,
            key_group_range=self.key_group_range,
            states=dict(self._metas),
            store=self.store.snapshot(checkpoint_id),
        )

    def savepoint(self, checkpoint_id: int, directory: str, format: str) -> StateHandle:
        """Write the state into `directory` (a new one, which the user owns: nothing here ever
        releases it) as a `native` or `canonical` savepoint; the handle restores it.

        A backend whose store cannot write its own format raises `StateError` naming `canonical`
        (which every backend can write).
        """
        if format == CANONICAL:
            start, end = key_range(self.key_group_range, self.key_group_range)
            now = self.clock()
            store = canonical.write(
                (entry for entry in self.store.scan(start, end) if not is_expired(entry[1], now)),
                dfs.join(directory, "state.canonical.msgpack.zst"),
                self.storage_options,
                written_by=self.backend_name,
            )
            backend = CANONICAL
        elif format == "native":
            savepoint = getattr(self.store, "savepoint", None)
            if savepoint is None:
                raise StateError(
                    f"the {self.backend_name} backend cannot write native savepoints yet: take a "
                    "canonical savepoint (--format canonical), which every backend restores"
                )
            store, backend = savepoint(checkpoint_id, directory), self.backend_name
        else:
            raise StateError(
                f"unknown savepoint format {format!r}: use {' or '.join(SAVEPOINT_FORMATS)}"
            )
        return StateHandle(
            backend=backend,
            scope=self.scope,
            checkpoint_id=checkpoint_id,
            max_parallelism=self.max_parallelism,
            key_group_range=self.key_group_range,
            states=dict(self._metas),
            store=store,
        )

    def release(self, handle: StateHandle, retained: Sequence[StateHandle]) -> None:
        """Give up a snapshot that is no longer retained, deleting what only it references.

        Files that a `retained` snapshot or the live backend still use stay. Idempotent.
        """
        self.store.release(handle.store, [kept.store for kept in retained])

    def dispose(self) -> None:
        """Release resources and local files; checkpoint files stay for later restores."""
        self._handles.clear()
        self.store.dispose()
