"""`slowmem://`: an in-memory fsspec file system whose table files are slow to read and can be held
back from being written, for tests of what the runtime does while storage keeps it waiting.

While `SlowMemoryFileSystem.slow` is set, each read of a file below a `tables/` folder takes
`READ_DELAY_S` (on the calling thread), and the reads in flight at once are counted
(`max_in_flight`, `reads`). While `write_gate` is clear, writing a table file waits for it (at
most `GATE_TIMEOUT_S`): an LSM's flushes then never finish, and its writers run into a stop.
Importing this module registers the protocol (in this process only: the class state is shared
by every instance, so a test sets it with `reset` and reads it from the class).
"""

import threading
import time
from typing import Any

import fsspec
from fsspec.implementations.memory import MemoryFileSystem

READ_DELAY_S = 0.02
GATE_TIMEOUT_S = 60.0


class SlowMemoryFileSystem(MemoryFileSystem):
    protocol = "slowmem"
    slow = False
    write_gate = threading.Event()
    lock = threading.Lock()
    in_flight = 0
    max_in_flight = 0
    reads = 0

    @classmethod
    def reset(cls, slow: bool = False) -> None:
        """Reads slow or not, writes let through, counts zeroed."""
        with cls.lock:
            cls.slow, cls.in_flight, cls.max_in_flight, cls.reads = slow, 0, 0, 0
        cls.write_gate.set()

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        cls = SlowMemoryFileSystem
        if not cls.slow or "/tables/" not in path:
            return super().cat_file(path, start, end, **kwargs)
        with cls.lock:
            cls.reads += 1
            cls.in_flight += 1
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            time.sleep(READ_DELAY_S)
            return super().cat_file(path, start, end, **kwargs)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode and "/tables/" in path:
            SlowMemoryFileSystem.write_gate.wait(GATE_TIMEOUT_S)
        return super()._open(path, mode, **kwargs)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        if "/tables/" in path:
            SlowMemoryFileSystem.write_gate.wait(GATE_TIMEOUT_S)
        super().pipe_file(path, value, **kwargs)


fsspec.register_implementation("slowmem", SlowMemoryFileSystem, clobber=True)
SlowMemoryFileSystem.reset()
