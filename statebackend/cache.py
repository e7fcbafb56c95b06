"""The state cache: decoded values of keyed state, bounded in bytes, written back to the store.

Every keyed state backend keeps the entries of its value-like states (value, reducing and
aggregating state: one stored entry per key and namespace) in a `StateCache` in front of its
ordered byte store, whatever the backend (`memory`, `rocksdb`, `lsm`). A read that finds its entry
there decodes nothing and reads no store; a write to a cached entry only changes it and marks it
dirty. List and map states read and write the store directly, as before.

- What enters: a write that follows a read of the same key and state (a read-modify-write: a
  count, a reduction, an aggregation) brings the entry into the cache, dirty, and the backend
  remembers the key (`KeyedStateBackend.remember_current_key`). Other reads and writes that
  miss go to the store as without a cache: a key used once, and a read-only or write-only use of
  state, cost what they did without the cache; a key updated again is served from it.
- What an entry holds: its cache key and physical key, the value (a decoded object, `ABSENT` when
  the key has none, or `ENCODED` with the serialized value in `payload`), the expiry time under
  TTL, and whether it is dirty. Values stay decoded only when that cannot change what a reader
  sees or what is stored: exact `int` (within msgpack's 64 bits), `float`, `bool`, `bytes`, `str`
  (ASCII when written: others are serialized as they are written, so that an error comes at once)
  and None, of a state serialized by the default msgpack serializer (immutable, and serialized
  exactly as before). Anything else (a list, a dict, a tuple, a value of a custom serializer) is
  kept serialized: each read decodes a fresh copy, as a read of the store would, so mutating what
  `value()` returned never changes state behind the state's back.
- Cache keys, one per key and namespace, tell entries apart exactly as physical keys do: the key
  object itself for keys of the exact types `str`, `int` (not `bool`) and `bytes` under the
  default key serializer (equal such objects serialize to equal bytes, unequal ones to unequal
  bytes), else a 1-tuple of the escaped serialized key, which no key object equals. So `1`, `1.0`
  and `True` stay three keys, as do `(1,)` and `(True,)`, exactly as in the store. A namespace
  other than the default one pairs the cache key with the escaped serialized namespace.
- Write-back: a dirty entry is written to the store (serialized and wrapped in its TTL envelope
  exactly as an uncached write would have been, with the expiry computed when it was written) at a
  snapshot or savepoint, before any scan or key iteration of its state, when the backend hands
  out its store (`KeyedStateBackend.store`), and when it is evicted. An entry written back as
  absent (cleared or expired) is forgotten. So the store, its snapshots and iteration order are
  what they were without the cache; a process killed between checkpoints loses what it would
  have lost anyway (everything since the last checkpoint) and restores that checkpoint.
- Bound: the entries' estimated sizes (`ENTRY_OVERHEAD` plus the physical key and the value: a
  payload's length, a `str` or `bytes` value's length plus 5, `SCALAR_SIZE` for other decoded
  values; at least the serialized size, which replaces the estimate at a write-back) stay within
  `max_bytes` (three quarters of `BackendConfig.cache_bytes`, configuration key
  `state.cache-bytes`, default 64 MiB; the other quarter remembers keys; 0 keeps at most one
  entry). An entry that would exceed it (a new one, or one that grew) first evicts others in
  second-chance (CLOCK) order: the least recently inserted first, but one read since the last
  sweep moves to the end instead; evicting a dirty entry writes it back first.
"""

from collections.abc import Callable
from typing import Any

from statebackend import ttl as envelope
from statebackend.store import KvStore

ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()
"""An entry's value when the key has none (never written, cleared, or expired)."""

ENCODED: Any = type("Encoded", (), {"__repr__": lambda self: "ENCODED"})()
"""An entry's value when it is kept serialized in the entry's `payload`."""

ENTRY_OVERHEAD = 200
"""Estimated bytes an entry costs besides its physical key and value (objects, dict slots)."""

SCALAR_SIZE = 9
"""Estimated bytes of a decoded value other than `str` and `bytes`: at least its serialized size,
as is a string's length plus 5, so that the size refreshed at a write-back never grows."""

DEFAULT_CACHE_BYTES = 64 << 20

_PLAIN_HEADER = envelope.wrap(b"", None)
# An eviction frees 1/_SLACK of the bound beyond what it must (so that sweeps are rare).
_SLACK = 8


class Entry:
    """One key's (and namespace's) entry of a cached state."""

    __slots__ = ("cache_key", "key", "value", "payload", "expiry", "size", "used", "dirty")

    def __init__(
        self, cache_key: Any, key: bytes, value: Any, payload: bytes | None, expiry: int | None
    ) -> None:
        self.cache_key = cache_key
        self.key = key
        self.value = value
        self.payload = payload
        self.expiry = expiry
        self.size = entry_size(key, value, payload)
        self.used = False
        self.dirty = False


def entry_size(key: bytes, value: Any, payload: bytes | None) -> int:
    """The estimated size of an entry (see the module docstring)."""
    if payload is not None:
        return ENTRY_OVERHEAD + len(key) + len(payload)
    if type(value) is str or type(value) is bytes:
        return ENTRY_OVERHEAD + len(key) + len(value) + 5
    return ENTRY_OVERHEAD + len(key) + SCALAR_SIZE


class CachedState:
    """The cached entries of one state: `entries` by cache key, and `dirty`, the entries marked
    dirty since the last write-back (an entry is appended when its `dirty` flag is set)."""

    def __init__(self, cache: "StateCache", serialize: Callable[[Any], bytes]) -> None:
        self.cache = cache
        self.entries: dict[Any, Entry] = {}
        self.dirty: list[Entry] = []
        self.bytes = 0
        self._serialize = serialize  # of decoded values (the state's msgpack serializer)

    def add(self, entry: Entry) -> Entry:
        """Insert a new entry, making room for it first."""
        cache = self.cache
        if cache.used + entry.size > cache.max_bytes:
            cache.make_room(entry.size, None)
        self.entries[entry.cache_key] = entry
        self.bytes += entry.size
        cache.used += entry.size
        return entry

    def mark_dirty(self, entry: Entry) -> None:
        if not entry.dirty:
            entry.dirty = True
            self.dirty.append(entry)

    def resize(self, entry: Entry, size: int) -> None:
        """Charge `entry` (in the cache) at `size` bytes from now on, evicting others if it grew
        beyond the bound."""
        delta = size - entry.size
        cache = self.cache
        if delta > 0 and cache.used + delta > cache.max_bytes:
            cache.make_room(delta, entry)
        entry.size = size
        self.bytes += delta
        cache.used += delta

    def write_back(self) -> None:
        """Write every dirty entry to the store; forget those written back as absent."""
        if not self.dirty:
            return
        entries = self.entries
        for entry in self.dirty:
            if entry.dirty:
                self._write(entry)
                if entry.value is ABSENT and entries.get(entry.cache_key) is entry:
                    del entries[entry.cache_key]
                    self.bytes -= entry.size
                    self.cache.used -= entry.size
        self.dirty.clear()

    def _write(self, entry: Entry) -> None:
        """Write a dirty entry to the store: its envelope exactly as an uncached write would have
        stored it (refreshing the entry's size), or its deletion."""
        entry.dirty = False
        if entry.value is ABSENT:
            self.cache.store.delete(entry.key)
            return
        payload = entry.payload
        if payload is None:
            payload = self._serialize(entry.value)
        size = entry_size(entry.key, None, payload)
        if size < entry.size:  # the exact size, below the estimate (never above it)
            self.bytes -= entry.size - size
            self.cache.used -= entry.size - size
            entry.size = size
        if entry.expiry is None:
            self.cache.store.put(entry.key, _PLAIN_HEADER + payload)
        else:
            self.cache.store.put(entry.key, envelope.wrap(payload, entry.expiry))

    def evict(self, wanted: int, keep: Entry | None) -> int:
        """Evict entries worth about `wanted` bytes (writing dirty ones back), never `keep`; the
        bytes freed.

        One sweep from the oldest entry: an entry read since the last sweep moves to the end
        instead (its second chance), any other is evicted, until enough is freed.
        """
        freed = 0
        victims: list[Entry] = []
        spared: list[Entry] = []
        for entry in self.entries.values():
            if freed >= wanted:
                break
            if entry.used or entry is keep:
                entry.used = False
                spared.append(entry)
            else:
                victims.append(entry)
                freed += entry.size
        entries = self.entries
        for entry in spared:
            entries[entry.cache_key] = entries.pop(entry.cache_key)
        for entry in victims:
            del entries[entry.cache_key]
            if entry.dirty:
                self._write(entry)
            self.bytes -= entry.size
            self.cache.used -= entry.size
        if len(self.dirty) > 2 * len(entries) + 64:  # evicted entries linger there: drop them
            self.dirty[:] = [entry for entry in self.dirty if entry.dirty]
        return freed

    def forget(self) -> None:
        """Drop every entry without writing anything."""
        self.cache.used -= self.bytes
        self.bytes = 0
        self.entries.clear()
        self.dirty.clear()


class StateCache:
    """The decoded entries of a backend's value-like states, within `max_bytes` (estimated)."""

    def __init__(self, store: KvStore, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the state cache size must not be negative, got {max_bytes}")
        self.store = store
        self.max_bytes = max_bytes
        self.used = 0
        self.states: list[CachedState] = []

    def state(self, serialize: Callable[[Any], bytes]) -> CachedState:
        """The entries of a new cached state whose decoded values `serialize` turns to bytes."""
        cached = CachedState(self, serialize)
        self.states.append(cached)
        return cached

    def make_room(self, size: int, keep: Entry | None) -> None:
        """Evict until `size` more bytes fit (and some slack), largest states first, never
        `keep` (an entry being written)."""
        target = self.max_bytes - size - self.max_bytes // _SLACK
        for _ in range(2):  # a sweep may only give second chances; the next one evicts
            for cached in sorted(self.states, key=lambda s: s.bytes, reverse=True):
                if self.used <= target:
                    return
                cached.evict(self.used - target, keep)
            if self.used <= target:
                return

    def write_back(self) -> None:
        """Write every dirty entry of every state to the store."""
        for cached in self.states:
            cached.write_back()

    def forget(self) -> None:
        """Drop every entry without writing anything (the backend is disposed of)."""
        for cached in self.states:
            cached.forget()
