"""Keyed timers (event time and processing time), kept in the state backend.

Every timer belongs to a key and a namespace (None, or a window). It is stored in the key's
internal map state `__timers__` (map key `(kind, timestamp, namespace)`), so a checkpoint of the
backend holds the timers and a restore brings them back. In memory, a heap per time domain
orders them; it is rebuilt on restore by scanning the keys of `__timers__`. Deleted timers are
dropped lazily.

Inside a `KeyedProcessFunction`, `ctx.timers` is this service, bound to the current key, e.g.
`ctx.timers.register_event_time_timer(ctx.timestamp + 60_000)`; see `streamlet.functions`.
"""

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

from statebackend import KeyedStateBackend, MapStateDescriptor
from statebackend.serializers import DEFAULT_SERIALIZER
from streamlet.elements import MIN_TIMESTAMP

EVENT_TIME = 0
PROCESSING_TIME = 1
TIMERS = MapStateDescriptor("__timers__")

_TimerId = tuple[int, int, bytes, Any]
FireTimer = Callable[[Any, Any, int], None]
"""`fire(key, namespace, timestamp)`, called with the backend's current key set to `key`."""


def processing_time_ms() -> int:
    return time.time_ns() // 1_000_000


class TimerService:
    """Registers, deletes and fires the timers of one keyed operator subtask."""

    def __init__(self, backend: KeyedStateBackend) -> None:
        self._backend = backend
        self._state = backend.get_state(TIMERS)
        self._heaps: tuple[list[tuple[int, int, Any, Any]], ...] = ([], [])
        self._live: set[_TimerId] = set()
        self._sequence = itertools.count()
        self.current_watermark = MIN_TIMESTAMP

    def restore(self) -> None:
        """Load every stored timer into the in-memory heaps (after restoring the backend)."""
        backend = self._backend
        for key in list(backend.keys(TIMERS.name)):
            backend.set_current_key(key)
            for kind, timestamp, namespace in self._state.keys():
                self._push(kind, timestamp, key, namespace)

    # -- the user-facing API (bound to the current key) -----------------------------------------

    def current_processing_time(self) -> int:
        return processing_time_ms()

    def register_event_time_timer(self, timestamp: int) -> None:
        self.register(EVENT_TIME, timestamp)

    def register_processing_time_timer(self, timestamp: int) -> None:
        self.register(PROCESSING_TIME, timestamp)

    def delete_event_time_timer(self, timestamp: int) -> None:
        self.delete(EVENT_TIME, timestamp)

    def delete_processing_time_timer(self, timestamp: int) -> None:
        self.delete(PROCESSING_TIME, timestamp)

    # -- for operators --------------------------------------------------------------------------

    def register(self, kind: int, timestamp: int, namespace: Any = None) -> None:
        entry = (kind, int(timestamp), namespace)
        if not self._state.contains(entry):
            self._state.put(entry, 1)
            self._push(kind, int(timestamp), self._backend.current_key, namespace)

    def delete(self, kind: int, timestamp: int, namespace: Any = None) -> None:
        self._state.remove((kind, int(timestamp), namespace))
        key_bytes = DEFAULT_SERIALIZER.serialize(self._backend.current_key)
        self._live.discard((kind, int(timestamp), key_bytes, namespace))

    def advance_watermark(self, watermark: int, fire: FireTimer) -> None:
        self.current_watermark = watermark
        self._fire_until(EVENT_TIME, watermark, fire)

    def advance_processing_time(self, now_ms: int, fire: FireTimer) -> None:
        self._fire_until(PROCESSING_TIME, now_ms, fire)

    def next_processing_time(self) -> int | None:
        heap = self._heaps[PROCESSING_TIME]
        while heap:
            timestamp, _, key, namespace = heap[0]
            if self._identity(PROCESSING_TIME, timestamp, key, namespace) in self._live:
                return timestamp
            heapq.heappop(heap)
        return None

    def _push(self, kind: int, timestamp: int, key: Any, namespace: Any) -> None:
        identity = self._identity(kind, timestamp, key, namespace)
        if identity not in self._live:
            self._live.add(identity)
            heapq.heappush(self._heaps[kind], (timestamp, next(self._sequence), key, namespace))

    @staticmethod
    def _identity(kind: int, timestamp: int, key: Any, namespace: Any) -> "_TimerId":
        return (kind, timestamp, DEFAULT_SERIALIZER.serialize(key), namespace)

    def _fire_until(self, kind: int, until: int, fire: FireTimer) -> None:
        heap = self._heaps[kind]
        while heap and heap[0][0] <= until:
            timestamp, _, key, namespace = heapq.heappop(heap)
            identity = self._identity(kind, timestamp, key, namespace)
            if identity not in self._live:
                continue
            self._live.discard(identity)
            self._backend.set_current_key(key)
            self._state.remove((kind, timestamp, namespace))
            fire(key, namespace, timestamp)
