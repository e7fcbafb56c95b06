"""Keyed state handles: ValueState, ListState, MapState, ReducingState, AggregatingState.

Each handle is bound to a backend and reads and writes the entries of the backend's current key
(and the handle's namespace) through the backend's ordered byte store. The handles are the same for
every backend; a backend only provides the store (see `statebackend.store`).

Stored values are TTL envelopes (`statebackend.ttl`). A list is one entry whose payload is a run of
msgpack frames, one per element (with TTL, each element is preceded by its own expiry), so `add`
appends bytes without decoding the list. A map stores one entry per map key.
"""

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgpack

from statebackend import ttl as envelope
from statebackend.cache import ABSENT, ENCODED, Entry, entry_size
from statebackend.descriptors import (
    AggregatingStateDescriptor,
    ListStateDescriptor,
    MapStateDescriptor,
    ReducingStateDescriptor,
    StateDescriptor,
    ValueStateDescriptor,
)
from statebackend.errors import NoCurrentKeyError, SerializationError
from statebackend.layout import EMPTY_COMPONENT, escape, prefix_end
from statebackend.serializers import MsgpackSerializer, Serializer, failure_reason
from statebackend.ttl import TtlUpdate

if TYPE_CHECKING:
    from statebackend.backend import CurrentKey, KeyedStateBackend

_IMMUTABLE_DEFAULTS = (int, float, str, bytes, bool, type(None))
_PLAIN_HEADER = envelope.wrap(b"", None)
_PLAIN_LEAD = _PLAIN_HEADER[0]  # the first byte of an envelope that never expires
# Decoded values within msgpack's integers are kept decoded (`statebackend.cache`).
_MIN_INT, _MAX_INT = -(1 << 63), (1 << 64) - 1


class KeyedState:
    """What every state handle shares: key building, namespaces, TTL and serialization."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, descriptor: StateDescriptor):
        self._backend = backend
        self._store = backend.kv_store
        self._clock = backend.clock
        self._name = descriptor.name
        self._sid = state_id.to_bytes(2, "big")
        self._ttl = descriptor.ttl_config
        self._refresh_on_read = (
            self._ttl is not None and self._ttl.update is TtlUpdate.ON_READ_AND_WRITE
        )
        self._namespace = EMPTY_COMPONENT

    @property
    def name(self) -> str:
        return self._name

    def set_namespace(self, namespace: Any) -> None:
        """Scope the following calls to `namespace` (for example a window); None is the default."""
        if namespace is None:
            self._namespace = EMPTY_COMPONENT
        else:
            data = self._serialize(self._backend.namespace_serializer, namespace, "namespace")
            self._namespace = escape(data)

    def _key(self) -> bytes:
        _, key_group, key_part = self._backend.current
        if key_part is None:
            raise self._no_current_key()
        return key_group + self._sid + key_part + self._namespace

    def _no_current_key(self) -> NoCurrentKeyError:
        return NoCurrentKeyError(f"state '{self._name}' used before set_current_key()")

    def _serialize(self, serializer: Serializer, value: Any, what: str = "value") -> bytes:
        try:
            data = serializer.serialize(value)
        except Exception as e:
            raise SerializationError(
                f"state '{self._name}': cannot serialize the {what}: {failure_reason(value, e)}"
            ) from _underlying(e)
        if not isinstance(data, bytes):
            raise SerializationError(
                f"state '{self._name}': the {what} serializer returned "
                f"{type(data).__name__}, not bytes"
            )
        return data

    def _deserialize(self, serializer: Serializer, data: bytes) -> Any:
        try:
            return serializer.deserialize(data)
        except Exception as e:
            raise SerializationError(
                f"state '{self._name}': cannot deserialize a stored value: "
                f"{failure_reason(data, e)}"
            ) from _underlying(e)

    def _wrap(self, payload: bytes) -> bytes:
        if self._ttl is None:
            return _PLAIN_HEADER + payload
        return envelope.wrap(payload, self._clock() + self._ttl.ttl_ms)

    def _live_payload(self, key: bytes, stored: bytes) -> bytes | None:
        """The payload of a stored envelope, or None (and the entry removed) once it expired."""
        if stored[0] == _PLAIN_LEAD:
            return stored[1:]
        expiry = envelope.expiry_of(stored)
        if expiry is None:
            return envelope.payload_of(stored)
        now = self._clock()
        if expiry <= now:
            self._store.delete(key)
            return None
        payload = envelope.payload_of(stored)
        if self._refresh_on_read:
            self._store.put(key, envelope.wrap(payload, now + self._ttl.ttl_ms))  # type: ignore[union-attr]
        return payload

    def clear(self) -> None:
        """Remove the current key's value."""
        self._store.delete(self._key())

    def write_back(self) -> None:
        """Write what this state keeps in the state cache to the store (nothing, here)."""

    def ahead_key(self, current: "CurrentKey") -> bytes | None:
        """The physical key to read ahead for `current` (`KeyedStateBackend.prefetch`): the
        entry of a one-entry state used in the default namespace (last), unless the state
        cache holds it; None for other states (and for one used in namespaces: windows)."""
        return None

    def _default_key(self, current: "CurrentKey") -> bytes | None:
        if self._namespace is not EMPTY_COMPONENT:
            return None
        return current[1] + self._sid + current[2] + EMPTY_COMPONENT  # type: ignore[operator]


class _CachedState(KeyedState):
    """A state with one entry per key and namespace, kept in the backend's state cache
    (`statebackend.cache`): reads find decoded values there, writes are written back later."""

    def __init__(
        self,
        backend: "KeyedStateBackend",
        state_id: int,
        descriptor: StateDescriptor,
        serializer: Serializer,
    ):
        super().__init__(backend, state_id, descriptor)
        self._serializer = serializer
        # Values stay decoded only under the default serializer (see `statebackend.cache`).
        self._decoded = type(serializer) is MsgpackSerializer
        # Whether a number may replace a decoded value in its entry as it is (no expiry to set).
        self._scalars_in_place = self._decoded and self._ttl is None
        self._cached = backend.cache.state(serializer.serialize)
        # The current key (`KeyedStateBackend.current`) when the store was last read: a write
        # that follows that read (a read-modify-write) brings the key into the cache.
        self._last_read: Any = None
        self._entries = self._cached.entries
        self._dirty = self._cached.dirty

    def ahead_key(self, current: "CurrentKey") -> bytes | None:
        return None if current[0] in self._entries else self._default_key(current)

    def _cache_key(self) -> Any:
        cache_key = self._backend.current[0]
        return cache_key if self._namespace is EMPTY_COMPONENT else (cache_key, self._namespace)

    def _read(self) -> Any:
        """The current value (decoded), or ABSENT: from the cache, else from the store (a read
        brings nothing into the cache)."""
        entry = self._entries.get(self._cache_key())
        if entry is None:
            key = self._key()
            self._last_read = self._backend.current
            stored = self._store.get(key)
            payload = None if stored is None else self._live_payload(key, stored)
            return ABSENT if payload is None else self._deserialize(self._serializer, payload)
        entry.used = True
        value = entry.value
        if entry.expiry is not None:
            value = self._live(entry)
        if value is ENCODED:
            return self._deserialize(self._serializer, entry.payload)  # type: ignore[arg-type]
        return value

    def _write(self, value: Any) -> None:
        """Set the current value (serialization errors are raised before anything changes)."""
        cache_key = self._cache_key()
        entry = self._entries.get(cache_key)
        if entry is not None:
            self._set(entry, value)
        elif self._last_read is self._backend.current:  # a read-modify-write
            self._admit(cache_key, value)
        else:
            self._store.put(self._key(), self._wrap(self._serialize(self._serializer, value)))

    def _entry_value(self, value: Any) -> tuple[Any, bytes | None]:
        """What an entry holds for `value`: the value and no payload when it stays decoded,
        else ENCODED and the serialized value (serialization errors are raised here)."""
        kind = type(value)
        if self._decoded and (
            (kind is int and _MIN_INT <= value <= _MAX_INT)
            or kind is float
            or kind is bool
            or kind is bytes
            or (kind is str and value.isascii())
            or value is None
        ):
            return value, None
        return ENCODED, self._serialize(self._serializer, value)

    def _set(self, entry: Entry, value: Any) -> None:
        """Set the value of a cached entry and mark it dirty."""
        value, payload = self._entry_value(value)
        expiry = None if self._ttl is None else self._clock() + self._ttl.ttl_ms
        self._cached.resize(entry, entry_size(entry.key, value, payload))
        entry.value, entry.payload, entry.expiry = value, payload, expiry
        if not entry.dirty:
            entry.dirty = True
            self._dirty.append(entry)

    def _admit(self, cache_key: Any, value: Any) -> None:
        """Bring the current key into the cache with `value` (dirty), written after a read of
        the store (`_last_read`); and remember the key, in use by a read-modify-write."""
        key = self._key()
        value, payload = self._entry_value(value)
        expiry = None if self._ttl is None else self._clock() + self._ttl.ttl_ms
        entry = self._cached.add(Entry(cache_key, key, value, payload, expiry))
        entry.dirty = True
        self._dirty.append(entry)
        self._backend.remember_current_key()

    def _live(self, entry: Entry) -> Any:
        """The value of an entry that expires: ABSENT once it expired (the entry then deletes the
        stored one), its expiry refreshed if reads refresh it."""
        now = self._clock()
        if entry.expiry <= now:  # type: ignore[operator]
            entry.value, entry.payload, entry.expiry = ABSENT, None, None
            self._cached.mark_dirty(entry)
            return ABSENT
        if self._refresh_on_read:
            entry.expiry = now + self._ttl.ttl_ms  # type: ignore[union-attr]
            self._cached.mark_dirty(entry)
        return entry.value

    def clear(self) -> None:
        """Remove the current key's value."""
        entry = self._entries.get(self._cache_key())
        if entry is None:
            self._store.delete(self._key())
        else:
            self._clear(entry)

    def _clear(self, entry: Entry) -> None:
        """Remove the value of a cached entry (it becomes a dirty ABSENT entry)."""
        self._cached.resize(entry, entry_size(entry.key, ABSENT, None))
        entry.value, entry.payload, entry.expiry = ABSENT, None, None
        self._cached.mark_dirty(entry)

    def write_back(self) -> None:
        self._cached.write_back()


class ValueState(_CachedState):
    """One value per key.

    >>> count = backend.get_state(ValueStateDescriptor("count", default=0))  # doctest: +SKIP
    >>> count.update(count.value() + 1)  # doctest: +SKIP
    """

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ValueStateDescriptor):
        super().__init__(backend, state_id, d, d.serializer)
        self._default = d.default
        self._default_bytes = (
            None
            if type(d.default) in _IMMUTABLE_DEFAULTS
            else self._serialize(d.serializer, d.default, "default")
        )

    def value(self) -> Any:
        # `_read`, written out: this is the hot path of most jobs.
        current = self._backend.current
        cache_key = current[0]
        if self._namespace is not EMPTY_COMPONENT:
            cache_key = (cache_key, self._namespace)
        entry = self._entries.get(cache_key)
        if entry is not None:
            entry.used = True
            value = entry.value
            if entry.expiry is not None:
                value = self._live(entry)
        else:  # read the store (a read brings nothing into the cache)
            if current[2] is None:
                raise self._no_current_key()
            key = current[1] + self._sid + current[2] + self._namespace  # `_key`
            self._last_read = current
            stored = self._store.get(key)
            if stored is None:
                return self._default_value()
            if stored[0] == _PLAIN_LEAD:  # `_live_payload` of an entry that never expires
                return self._deserialize(self._serializer, stored[1:])
            payload = self._live_payload(key, stored)
            if payload is None:
                return self._default_value()
            return self._deserialize(self._serializer, payload)
        if value is ABSENT:
            return self._default_value()
        if value is ENCODED:
            return self._deserialize(self._serializer, entry.payload)  # type: ignore[arg-type]
        return value

    def _default_value(self) -> Any:
        if self._default_bytes is None:
            return self._default
        return self._deserialize(self._serializer, self._default_bytes)  # a fresh copy each time

    def update(self, value: Any) -> None:
        """Set the value; `update(None)` clears it."""
        current = self._backend.current
        cache_key = current[0]
        if self._namespace is not EMPTY_COMPONENT:
            cache_key = (cache_key, self._namespace)
        entry = self._entries.get(cache_key)
        if entry is None:
            if value is None:
                self._store.delete(self._key())
            elif self._last_read is current:  # a read-modify-write
                self._admit(cache_key, value)
            else:  # write it through (`_key` and `_wrap`, written out)
                if current[2] is None:
                    raise self._no_current_key()
                payload = self._serialize(self._serializer, value)
                self._store.put(
                    current[1] + self._sid + current[2] + self._namespace,
                    _PLAIN_HEADER + payload if self._ttl is None else self._wrap(payload),
                )
            return
        kind = type(value)
        if (
            entry.payload is None
            and self._scalars_in_place
            and (kind is int and _MIN_INT <= value <= _MAX_INT or kind is float or kind is bool)
        ):  # the common case first: a number replacing a decoded value (charged as one)
            entry.value = value
            if not entry.dirty:
                entry.dirty = True
                self._dirty.append(entry)
        elif value is None:
            self._clear(entry)
        else:
            self._set(entry, value)


class ListState(KeyedState):
    """A list per key. `get()` returns a new list; `add` appends without reading the elements."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ListStateDescriptor):
        super().__init__(backend, state_id, d)
        self._serializer = d.serializer

    def ahead_key(self, current: "CurrentKey") -> bytes | None:
        return self._default_key(current)

    def get(self) -> list[Any]:
        key = self._key()
        stored = self._store.get(key)
        if stored is None:
            return []
        frames = _unpack_frames(envelope.payload_of(stored))
        if self._ttl is None:
            return [self._deserialize(self._serializer, f) for f in frames]
        now = self._clock()
        expiries, elements = frames[0::2], frames[1::2]
        live = [data for expiry, data in zip(expiries, elements, strict=True) if expiry > now]
        if not live:
            self._store.delete(key)
            return []
        if self._refresh_on_read:
            self._write_with_ttl(key, live)
        elif len(live) < len(elements):
            self._store.put(key, self._encode(live, expiries=[e for e in expiries if e > now]))
        return [self._deserialize(self._serializer, data) for data in live]

    def add(self, value: Any) -> None:
        self.add_all([value])

    def add_all(self, values: Iterable[Any]) -> None:
        """Append every value (all are serialized before anything is written)."""
        encoded = [self._serialize(self._serializer, v) for v in values]
        if not encoded:
            return
        key = self._key()
        stored = self._store.get(key)
        if self._ttl is None:
            frames = b"".join(msgpack.packb(e) for e in encoded)
            self._store.put(key, (stored or _PLAIN_HEADER) + frames)
            return
        expiry = self._clock() + self._ttl.ttl_ms
        old = b"" if stored is None else envelope.payload_of(stored)
        frames = b"".join(msgpack.packb(expiry) + msgpack.packb(e) for e in encoded)
        self._store.put(key, envelope.wrap(old + frames, expiry))

    def update(self, values: Iterable[Any]) -> None:
        """Replace the list; an empty one clears it."""
        encoded = [self._serialize(self._serializer, v) for v in values]
        key = self._key()
        if not encoded:
            self._store.delete(key)
        elif self._ttl is None:
            self._store.put(key, self._encode(encoded))
        else:
            self._write_with_ttl(key, encoded)

    def _write_with_ttl(self, key: bytes, encoded: list[bytes]) -> None:
        expiry = self._clock() + self._ttl.ttl_ms  # type: ignore[union-attr]
        self._store.put(key, self._encode(encoded, expiries=[expiry] * len(encoded)))

    @staticmethod
    def _encode(encoded: list[bytes], expiries: list[int] | None = None) -> bytes:
        if expiries is None:
            return _PLAIN_HEADER + b"".join(msgpack.packb(e) for e in encoded)
        frames = b"".join(
            msgpack.packb(x) + msgpack.packb(e) for x, e in zip(expiries, encoded, strict=True)
        )
        return envelope.wrap(frames, max(expiries))


class MapState(KeyedState):
    """A map per key, one stored entry per map key, iterated in serialized-key order."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: MapStateDescriptor):
        super().__init__(backend, state_id, d)
        self._key_serializer = d.key_serializer
        self._value_serializer = d.value_serializer

    def get(self, map_key: Any, default: Any = None) -> Any:
        key = self._key() + self._serialize(self._key_serializer, map_key, "map key")
        stored = self._store.get(key)
        payload = None if stored is None else self._live_payload(key, stored)
        return default if payload is None else self._deserialize(self._value_serializer, payload)

    def contains(self, map_key: Any) -> bool:
        key = self._key() + self._serialize(self._key_serializer, map_key, "map key")
        stored = self._store.get(key)
        return stored is not None and self._live_payload(key, stored) is not None

    __contains__ = contains

    def put(self, map_key: Any, value: Any) -> None:
        self.put_all({map_key: value})

    def put_all(self, entries: Mapping[Any, Any]) -> None:
        """Put every entry (all are serialized before anything is written)."""
        prefix = self._key()
        encoded = [
            (
                prefix + self._serialize(self._key_serializer, k, "map key"),
                self._wrap(self._serialize(self._value_serializer, v)),
            )
            for k, v in entries.items()
        ]
        for key, value in encoded:
            self._store.put(key, value)

    def remove(self, map_key: Any) -> None:
        self._store.delete(self._key() + self._serialize(self._key_serializer, map_key, "map key"))

    def items(self) -> Iterator[tuple[Any, Any]]:
        for map_key, payload in self._live_entries():
            yield (
                self._deserialize(self._key_serializer, map_key),
                self._deserialize(self._value_serializer, payload),
            )

    def keys(self) -> Iterator[Any]:
        for map_key, _ in self._live_entries():
            yield self._deserialize(self._key_serializer, map_key)

    def values(self) -> Iterator[Any]:
        for _, payload in self._live_entries():
            yield self._deserialize(self._value_serializer, payload)

    __iter__ = keys

    def is_empty(self) -> bool:
        return next(self._live_entries(), None) is None

    def clear(self) -> None:
        prefix = self._key()
        for key, _ in self._store.scan(prefix, prefix_end(prefix)):
            self._store.delete(key)

    def _live_entries(self) -> Iterator[tuple[bytes, bytes]]:
        """(serialized map key, payload) of the live entries, in key order."""
        prefix = self._key()
        start = len(prefix)
        for key, stored in self._store.scan(prefix, prefix_end(prefix)):
            payload = self._live_payload(key, stored)
            if payload is not None:
                yield key[start:], payload


class ReducingState(_CachedState):
    """A value per key; `add(v)` stores `reduce(current, v)`."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ReducingStateDescriptor):
        super().__init__(backend, state_id, d, d.serializer)
        self._reduce = d.reduce

    def get(self) -> Any:
        value = self._read()
        return None if value is ABSENT else value  # a stored None is None too

    def add(self, value: Any) -> None:
        current = self._read()
        if current is ABSENT or current is None:
            self._write(value)
        else:
            self._write(self._reduce(current, value))  # type: ignore[misc]


class AggregatingState(_CachedState):
    """An accumulator per key; `add(v)` folds v in, `get()` returns the aggregate's result."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: AggregatingStateDescriptor):
        super().__init__(backend, state_id, d, d.accumulator_serializer)
        self._aggregate = d.aggregate

    def get(self) -> Any:
        accumulator = self._read()
        if accumulator is ABSENT or accumulator is None:
            return None
        return self._aggregate.get_result(accumulator)  # type: ignore[union-attr]

    def add(self, value: Any) -> None:
        accumulator = self._read()
        if accumulator is ABSENT or accumulator is None:
            accumulator = self._aggregate.create_accumulator()  # type: ignore[union-attr]
        self._write(self._aggregate.add(value, accumulator))  # type: ignore[union-attr]


def _underlying(error: Exception) -> BaseException | None:
    """What to chain a state's SerializationError to: a serializer's SerializationError is
    restated in the message, so only its own cause (if any) is kept."""
    return error.__cause__ if isinstance(error, SerializationError) else error


def _unpack_frames(payload: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(payload) + 1)
    unpacker.feed(payload)
    return list(unpacker)


STATE_CLASSES: dict[str, type[KeyedState]] = {
    "value": ValueState,
    "list": ListState,
    "map": MapState,
    "reducing": ReducingState,
    "aggregating": AggregatingState,
}
