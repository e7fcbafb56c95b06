"""A circuit breaker for one compaction service endpoint.

States: CLOSED (calls go remote) -> after `failure_threshold` consecutive failures -> OPEN (calls
stay local) for `backoff_s` -> a health probe is due; while it runs the breaker is HALF_OPEN
(still local) -> a SERVING answer closes it, anything else opens it again with the back-off
doubled (up to `max_backoff_s`). A success resets the failure count and the back-off.

Thread-safe: gRPC completion callbacks and the writer's thread use it concurrently.
"""

import threading
import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        backoff_s: float = 10.0,
        max_backoff_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError(
                "a circuit breaker needs failure_threshold >= 1, backoff_s > 0 and "
                f"max_backoff_s >= backoff_s, got {failure_threshold}, {backoff_s}, {max_backoff_s}"
            )
        self.failure_threshold = failure_threshold
        self.base_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._failures = 0
        self._backoff_s = backoff_s
        self._open_until = 0.0

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    def allows_remote(self) -> bool:
        with self._lock:
            return self._state is State.CLOSED

    def begin_probe(self) -> bool:
        """True (and HALF_OPEN) when the breaker is open, its back-off is over and no probe is
        running: the caller must then probe and report `probe_result`."""
        with self._lock:
            if self._state is State.OPEN and self._clock() >= self._open_until:
                self._state = State.HALF_OPEN
                return True
            return False

    def probe_result(self, healthy: bool) -> None:
        with self._lock:
            if healthy:
                self._close_locked()
            else:
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
                self._open_locked()

    def record_success(self) -> None:
        with self._lock:
            self._close_locked()

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is State.CLOSED and self._failures >= self.failure_threshold:
                self._open_locked()

    def _close_locked(self) -> None:
        self._state = State.CLOSED
        self._failures = 0
        self._backoff_s = self.base_backoff_s

    def _open_locked(self) -> None:
        self._state = State.OPEN
        self._open_until = self._clock() + self._backoff_s
