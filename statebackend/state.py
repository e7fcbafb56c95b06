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
from statebackend.serializers import Serializer, failure_reason
from statebackend.ttl import TtlUpdate

if TYPE_CHECKING:
    from statebackend.backend import KeyedStateBackend

_IMMUTABLE_DEFAULTS = (int, float, str, bytes, bool, type(None))
_PLAIN_HEADER = envelope.wrap(b"", None)


class KeyedState:
    """What every state handle shares: key building, namespaces, TTL and serialization."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, descriptor: StateDescriptor):
        self._backend = backend
        self._store = backend.store
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
        backend = self._backend
        if backend.current_key_part is None:
            raise NoCurrentKeyError(f"state '{self._name}' used before set_current_key()")
        return backend.current_key_group + self._sid + backend.current_key_part + self._namespace

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


class ValueState(KeyedState):
    """One value per key.

    >>> count = backend.get_state(ValueStateDescriptor("count", default=0))  # doctest: +SKIP
    >>> count.update(count.value() + 1)  # doctest: +SKIP
    """

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ValueStateDescriptor):
        super().__init__(backend, state_id, d)
        self._serializer = d.serializer
        self._default = d.default
        self._default_bytes = (
            None
            if type(d.default) in _IMMUTABLE_DEFAULTS
            else self._serialize(d.serializer, d.default, "default")
        )

    def value(self) -> Any:
        key = self._key()
        stored = self._store.get(key)
        payload = None if stored is None else self._live_payload(key, stored)
        if payload is None:
            return self._default_value()
        return self._deserialize(self._serializer, payload)

    def update(self, value: Any) -> None:
        """Set the value; `update(None)` clears it."""
        if value is None:
            self.clear()
            return
        payload = self._serialize(self._serializer, value)
        self._store.put(self._key(), self._wrap(payload))

    def _default_value(self) -> Any:
        if self._default_bytes is None:
            return self._default
        return self._deserialize(self._serializer, self._default_bytes)  # a fresh copy each time


class ListState(KeyedState):
    """A list per key. `get()` returns a new list; `add` appends without reading the elements."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ListStateDescriptor):
        super().__init__(backend, state_id, d)
        self._serializer = d.serializer

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


class ReducingState(KeyedState):
    """A value per key; `add(v)` stores `reduce(current, v)`."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: ReducingStateDescriptor):
        super().__init__(backend, state_id, d)
        self._serializer = d.serializer
        self._reduce = d.reduce

    def get(self) -> Any:
        key = self._key()
        stored = self._store.get(key)
        payload = None if stored is None else self._live_payload(key, stored)
        return None if payload is None else self._deserialize(self._serializer, payload)

    def add(self, value: Any) -> None:
        current = self.get()
        reduced = value if current is None else self._reduce(current, value)  # type: ignore[misc]
        self._store.put(self._key(), self._wrap(self._serialize(self._serializer, reduced)))


class AggregatingState(KeyedState):
    """An accumulator per key; `add(v)` folds v in, `get()` returns the aggregate's result."""

    def __init__(self, backend: "KeyedStateBackend", state_id: int, d: AggregatingStateDescriptor):
        super().__init__(backend, state_id, d)
        self._serializer = d.accumulator_serializer
        self._aggregate = d.aggregate

    def _accumulator(self) -> Any:
        key = self._key()
        stored = self._store.get(key)
        payload = None if stored is None else self._live_payload(key, stored)
        return None if payload is None else self._deserialize(self._serializer, payload)

    def get(self) -> Any:
        accumulator = self._accumulator()
        return None if accumulator is None else self._aggregate.get_result(accumulator)  # type: ignore[union-attr]

    def add(self, value: Any) -> None:
        accumulator = self._accumulator()
        if accumulator is None:
            accumulator = self._aggregate.create_accumulator()  # type: ignore[union-attr]
        accumulator = self._aggregate.add(value, accumulator)  # type: ignore[union-attr]
        self._store.put(self._key(), self._wrap(self._serialize(self._serializer, accumulator)))


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
