"""The keyed state backend of one operator subtask, and its snapshot handle.

A `KeyedStateBackend` owns the state of the key groups in its `KeyGroupRange`: it turns the current
key into the physical key prefix (`statebackend.layout`), hands out state handles by descriptor,
iterates the keys of a state, and snapshots to / restores from a small `StateHandle`.

A state's id (two bytes of every physical key) is derived from its name (`new_state_id`), so the
subtasks of an operator agree on it and a rescale can combine their snapshots as they are; a
snapshot records `name -> id`, and a restore keeps the recorded ids.

`prefetch(keys, max_bytes)` reads the one-entry states of many keys ahead, concurrently, when the
store can (see `statebackend.store`): a runtime calls it for a batch of records, off its event
loop, before it runs them.

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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash
from xxhash import xxh3_64_intdigest

from statebackend import canonical, dfs
from statebackend.cache import DEFAULT_CACHE_BYTES, StateCache
from statebackend.descriptors import StateDescriptor
from statebackend.errors import (
    InvalidHandleError,
    KeyGroupOutOfRangeError,
    NoCurrentKeyError,
    SerializationError,
    StateError,
    StateTypeConflictError,
)
from statebackend.keygroups import KeyGroupRange
from statebackend.layout import EMPTY_COMPONENT, escape, prefix_end, state_prefix, unescape_prefix
from statebackend.serializers import MsgpackSerializer, Serializer, failure_reason
from statebackend.state import STATE_CLASSES, KeyedState
from statebackend.store import KvStore, StoreHandle, key_range
from statebackend.ttl import Clock, is_expired

HANDLE_FORMAT = 1
CANONICAL = canonical.CANONICAL
SAVEPOINT_FORMATS = ("native", CANONICAL)
# State ids are 1..0xFFFE (two bytes of the physical key; 0 and 0xFFFF are never used).
_MAX_STATE_ID = 0xFFFE
# Estimated bytes a remembered key costs besides its serialized form (twice: raw and escaped).
_KNOWN_KEY_OVERHEAD = 120

CurrentKey = tuple[Any, bytes, bytes | None]
"""The current key as state handles read it: its cache key (`statebackend.cache`), key group (2
bytes, big-endian) and escaped serialized form (None before any key is set)."""


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
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ):
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
        # Per state name, the descriptor last asked for and its handle (one per state: a job
        # that makes a new descriptor per call retains none of them).
        self._by_descriptor: dict[str, tuple[StateDescriptor, KeyedState]] = {}
        # The store as it is, without the writes the state cache still holds (see `store`).
        self.kv_store = store
        # A quarter of the cache bytes remembers keys, the rest values (`statebackend.cache`).
        self._known_limit = cache_bytes // 4
        self.cache = StateCache(store, cache_bytes - self._known_limit)
        self._object_keys = type(key_serializer) is MsgpackSerializer
        self._known_keys: dict[Any, CurrentKey] = {}
        self._known_bytes = 0
        # The physical-key prefix of each key group (2 bytes, big-endian) of this subtask, None
        # for the others.
        self._group_prefixes: list[bytes | None] = [
            group.to_bytes(2, "big") if group in key_group_range else None
            for group in range(max_parallelism)
        ]
        self._current_key: Any = None
        # What state handles read of the current key: its cache key, key group and escaped bytes.
        self.current: CurrentKey = (None, b"", None)

    # -- the current key ---------------------------------------------------------------------

    def set_current_key(self, key: Any) -> None:
        """Make `key` the key that every state handle of this backend reads and writes.

        A key a state handle cached is remembered (`remember_current_key`) with its key group
        and serialized form, so that setting it again serializes and hashes nothing.
        """
        kind = type(key)
        object_key = kind is str or kind is int or kind is bytes
        if object_key:
            current = self._known_keys.get(key)
            if current is not None:  # remembered: nothing to serialize or hash
                self._current_key = key
                self.current = current
                return
        try:
            key_bytes = self.key_serializer.serialize(key)
        except Exception as e:
            raise SerializationError(
                f"cannot serialize the key {key!r:.100}: {failure_reason(key, e)}"
            ) from (e.__cause__ if isinstance(e, SerializationError) else e)
        key_group = xxh3_64_intdigest(key_bytes) % self.max_parallelism  # `key_group_of`
        group_prefix = self._group_prefixes[key_group]
        if group_prefix is None:
            raise KeyGroupOutOfRangeError(
                f"key {key!r} is in key group {key_group}, outside this subtask's key groups "
                f"{self.key_group_range.start}..{self.key_group_range.end}"
            )
        key_part = key_bytes.replace(b"\x00", b"\x00\xff") + EMPTY_COMPONENT  # `escape`
        if object_key:
            cache_key = key if self._object_keys else (key_part,)
        else:
            cache_key = (key_part,)
            known = self._known_keys.get(cache_key)
            if known is not None:
                self._current_key = key
                self.current = known
                return
        self._current_key = key
        self.current = (cache_key, group_prefix, key_part)

    def remember_current_key(self) -> None:
        """Remember the current key, in use by a read-modify-write of a state (which brings it
        into the state cache): the memory, within a quarter of the cache bytes, starts afresh
        when full."""
        current = self.current
        key = self._current_key
        kind = type(key)
        memory_key = key if kind is str or kind is int or kind is bytes else current[0]
        size = _KNOWN_KEY_OVERHEAD + 2 * len(current[2])  # type: ignore[arg-type]
        known_bytes = self._known_bytes + size
        if known_bytes > self._known_limit:
            self._known_keys.clear()
            known_bytes = size
        self._known_keys[memory_key] = current
        self._known_bytes = known_bytes

    @property
    def current_key(self) -> Any:
        return self._current_key

    @property
    def store(self) -> KvStore:
        """The store, for direct use: the state cache is written back and emptied first, so
        that what is read from the store is what the handles see, and what is written to it
        is what they read next. State handles use `kv_store` and the cache instead."""
        self.cache.write_back()
        self.cache.forget()
        return self.kv_store

    # -- states --------------------------------------------------------------------------------

    def get_state(self, descriptor: StateDescriptor) -> Any:
        """The handle of `descriptor`'s state (one per name; the same object on every call).

        A descriptor is checked against the state's type once: asked for again with the same
        descriptor object (the last one asked for with its name), the handle is returned at once.
        """
        known = self._by_descriptor.get(descriptor.name)
        if known is not None and known[0] is descriptor:
            return known[1]
        handle = self._handles.get(descriptor.name)
        meta = self._metas.get(descriptor.name)
        if meta is not None:
            meta.check(descriptor)
        if handle is not None:
            self._by_descriptor[descriptor.name] = (descriptor, handle)
            return handle
        if meta is None:
            state_id = new_state_id(descriptor.name, self._state_ids)
            meta = StateMeta(state_id, descriptor.kind, descriptor.ttl_config is not None)
            self._state_ids.add(state_id)
        handle = STATE_CLASSES[descriptor.kind](self, meta.state_id, descriptor)  # type: ignore[arg-type]
        self._metas[descriptor.name] = meta
        self._handles[descriptor.name] = handle
        self._by_descriptor[descriptor.name] = (descriptor, handle)
        return handle

    def key_prefix(self, state_name: str) -> bytes:
        """The physical key of the current key in `state_name` (default namespace).

        A value's entry has exactly this key; a map's entries start with it.
        """
        meta = self._metas.get(state_name)
        if meta is None:
            raise StateError(f"no state named '{state_name}' in this backend")
        _, key_group, key_part = self.current
        if key_part is None:
            raise NoCurrentKeyError("key_prefix() called before set_current_key()")
        return key_group + meta.state_id.to_bytes(2, "big") + key_part + EMPTY_COMPONENT

    def prefetch(self, keys: Iterable[Any], max_bytes: int) -> None:
        """Read ahead what the one-entry states used so far (value, reducing, aggregating and
        list state, default namespace) hold for `keys` and the state cache does not, if the
        store reads ahead (its optional `prefetch`, which holds at most about `max_bytes` of
        values), so that the following reads of them do not wait for storage. A key that cannot
        be used is skipped (using it raises as usual). Blocks: call it off the event loop, while
        nothing else uses this backend."""
        prefetch = getattr(self.kv_store, "prefetch", None)
        if prefetch is None or not self._handles:
            return
        handles = list(self._handles.values())
        wanted: list[bytes] = []
        saved = self._current_key, self.current  # the key is set for each key, then restored
        try:
            for key in keys:
                try:
                    self.set_current_key(key)
                except StateError:
                    continue
                for handle in handles:
                    physical = handle.ahead_key(self.current)
                    if physical is not None:
                        wanted.append(physical)
        finally:
            self._current_key, self.current = saved
        if wanted:
            prefetch(wanted, max_bytes)

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
        handle = self._handles.get(state_name)
        for key_group in self.key_group_range:
            if handle is not None:
                handle.write_back()  # the scan sees what was written so far
            prefix = state_prefix(key_group, meta.state_id)
            previous = None
            now = self.clock()
            for physical, stored in self.kv_store.scan(prefix, prefix_end(prefix)):
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
        self.cache.write_back()
        return StateHandle(
            backend=self.backend_name,
            scope=self.scope,
            checkpoint_id=checkpoint_id,
            max_parallelism=self.max_parallelism,
            key_group_range=self.key_group_range,
            states=dict(self._metas),
            store=self.kv_store.snapshot(checkpoint_id),
        )

    def savepoint(self, checkpoint_id: int, directory: str, format: str) -> StateHandle:
        """Write the state into `directory` (a new one, which the user owns: nothing here ever
        releases it) as a `native` or `canonical` savepoint; the handle restores it.

        A backend whose store cannot write its own format raises `StateError` naming `canonical`
        (which every backend can write).
        """
        self.cache.write_back()
        if format == CANONICAL:
            start, end = key_range(self.key_group_range, self.key_group_range)
            now = self.clock()
            entries = self.kv_store.scan(start, end)
            store = canonical.write(
                (entry for entry in entries if not is_expired(entry[1], now)),
                dfs.join(directory, "state.canonical.msgpack.zst"),
                self.storage_options,
                written_by=self.backend_name,
            )
            backend = CANONICAL
        elif format == "native":
            savepoint = getattr(self.kv_store, "savepoint", None)
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
        self.kv_store.release(handle.store, [kept.store for kept in retained])

    def metrics(self) -> dict[str, Any]:
        """What the store reports through its optional `metrics()` ({} without one)."""
        metrics = getattr(self.kv_store, "metrics", None)
        return {} if metrics is None else metrics()

    def dispose(self) -> None:
        """Release resources and local files; checkpoint files stay for later restores. What the
        state cache holds is dropped, not written."""
        self.cache.forget()
        self._handles.clear()
        self._by_descriptor.clear()
        self.kv_store.dispose()
