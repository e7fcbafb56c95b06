"""Asynchronous, batched state access: a keyed operator never blocks the event loop on its store.

An `AsyncStateAccess` runs the input batches of a keyed operator subtask (the head of its chain:
a keyed stream's operator always is) in parts of at most `state.async.max-records` records. Before
each part, on a worker thread the subtask awaits, so that the event loop meanwhile runs the other
subtasks, the data exchange, heartbeats and metrics:

- if the store put a write stall off (`defer_write_stalls`: the lsm backend when L0 or its
  memtables are at their stop or slowdown limits), it waits the stall out there (`wait_writable`),
  so a stall is backpressure: the subtask reads no more input meanwhile, its channels fill up and
  the sources slow down;
- if the store reads ahead (`reads_ahead`: the lsm backend, its tables on a remote file system),
  the state of the part's keys is read there, concurrently (`KeyedStateBackend.prefetch`, at
  most `state.async.max-bytes` held).

Then the part runs on the event loop, synchronously and in order, on warm state: records keep
their order (of one key and of all keys), and what comes after a batch in the subtask's input
(a watermark and the timers it fires, a barrier and its snapshot) sees the effects of every record
before it. An `async def` process function's part is awaited to its end instead (its records of
different keys overlap: `streamlet.async_process`), with the same guarantee for what follows. A
store that does neither (`memory`, `rocksdb`) runs batches as they are.
`state.async.enabled: false` turns this off (every access synchronous, on the event loop).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from statebackend import KeyedStateBackend
from streamlet.outputs import Timestamps
from streamlet.partitioners import KeySelector

ProcessBatch = Callable[[list[Any], Timestamps, int], Awaitable[None] | None]
"""`Operator.process_batch`, or an `async def` process function's (awaited to its end)."""


class AsyncStateAccess:
    """Runs the batches of one keyed operator subtask (see the module docstring)."""

    def __init__(
        self,
        backend: KeyedStateBackend,
        key_selectors: list[KeySelector],
        max_records: int,
        max_bytes: int,
    ) -> None:
        self._backend = backend
        self._key_selectors = key_selectors
        self._max_records = max_records
        self._max_bytes = max_bytes
        store = backend.kv_store
        self._reads_ahead = getattr(store, "reads_ahead", False)
        defer = getattr(store, "defer_write_stalls", None)
        if defer is not None:
            defer()
        self._store = store if defer is not None else None  # whose stalls are awaited

    @classmethod
    def of(
        cls,
        backend: KeyedStateBackend,
        key_selectors: list[KeySelector],
        max_records: int,
        max_bytes: int,
    ) -> "AsyncStateAccess | None":
        """The access for `backend`, or None when its store neither reads ahead nor stalls."""
        store = backend.kv_store
        if not (getattr(store, "reads_ahead", False) or hasattr(store, "defer_write_stalls")):
            return None
        return cls(backend, key_selectors, max_records, max_bytes)

    async def run(
        self,
        values: list[Any],
        timestamps: Timestamps,
        input_index: int,
        process_batch: ProcessBatch,
    ) -> None:
        """`process_batch` of the records in parts, each after its state is ready."""
        step = self._max_records
        if len(values) <= step:
            await self._ready(values, input_index)
            running = process_batch(values, timestamps, input_index)
            if running is not None:
                await running
            return
        for start in range(0, len(values), step):
            part = values[start : start + step]
            await self._ready(part, input_index)
            running = process_batch(
                part, None if timestamps is None else timestamps[start : start + step], input_index
            )
            if running is not None:
                await running

    async def _ready(self, values: list[Any], input_index: int) -> None:
        """Await a write stall, then read the state of the records' keys ahead."""
        store = self._store
        if store is not None and store.writes_stalled():
            await asyncio.to_thread(store.wait_writable)
        if self._reads_ahead:
            keys = self._keys(values, input_index)
            if keys:
                await asyncio.to_thread(self._backend.prefetch, keys, self._max_bytes)

    def _keys(self, values: list[Any], input_index: int) -> list[Any]:
        """The records' keys; a record whose key selector fails is left out (it fails, naming
        the record, when it runs)."""
        select = self._key_selectors[input_index]
        keys = []
        for value in values:
            try:
                keys.append(select(value))
            except Exception:  # noqa: BLE001 - raised again when the record runs
                continue
        return keys
