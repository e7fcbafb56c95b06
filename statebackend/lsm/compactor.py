"""The `Compactor` interface and the local compactor.

A compactor turns a `CompactionSpec` into a `CompactionResult` somewhere else than the writer's
thread and reports it through a `concurrent.futures.Future`. The DB never blocks on it: it polls
the futures from its background thread and installs results (see db.py for the install rules).
A remote compactor (the compaction service's client) implements the same interface.

`CompactionRegistry` is the DB's book of started compactions: which are registered (their result
may be installed), which were abandoned (cancelled or timed out: their outputs get deleted), and
which output prefixes the garbage collector must keep (docs/lsm-protocol.md, "Protection of
in-flight outputs").

A compaction mode names how a backend gets its compactor: `local` is built in; the runtime
registers `remote` (the compaction service's client) with `register_compaction_mode` where it
assembles a program, so this package never imports the service.

`LocalCompactor` runs `run_compaction` in worker processes (spawned, so no fork of a threaded
writer), which keeps compaction CPU off the writer's GIL. A DB rooted on an in-process file system
(memory://) cannot be read from another process, so for those the compactor uses threads.
One compactor is shared by many DBs, so one failed compaction must not fail the others for good:
a worker sends back only errors that unpickle (others become a `CompactionError` with the same
message), and a pool broken anyway (a worker killed) is replaced by a new one, both when a submit
finds it broken and when a compaction's future reports it. The compactions that were running in a
broken pool fail; their DBs retry them.
"""

import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from statebackend.errors import CompactionError
from statebackend.lifeline import exit_with_parent
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, run_compaction
from statebackend.lsm.meta import RefId
from statebackend.lsm.picker import Pick, Reservation

log = logging.getLogger(__name__)

# File system protocols whose contents live in this process only.
IN_PROCESS_PROTOCOLS = frozenset({"memory"})


class Compactor(Protocol):
    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        """Start a compaction; the future holds its result or the error it failed with."""
        ...

    def close(self) -> None:
        """Stop accepting work and release workers (running work may be abandoned)."""
        ...


class LocalCompactor:
    """Runs compactions in a pool of `workers` processes (or threads when `processes` is False);
    a broken process pool is replaced (see the module docstring)."""

    def __init__(self, workers: int = 2, processes: bool = True) -> None:
        self.processes = processes
        self.workers = workers
        self._lock = threading.Lock()  # guards _pool and _closed
        self._closed = False
        self._pool: Executor = self._new_pool()

    def _new_pool(self) -> Executor:
        if self.processes:
            spawn = multiprocessing.get_context("spawn")
            return ProcessPoolExecutor(
                self.workers,
                mp_context=spawn,
                initializer=exit_with_parent,  # no worker outlives a SIGKILLed writer process
                initargs=(os.getpid(),),
            )
        return ThreadPoolExecutor(self.workers, thread_name_prefix="lsm-compaction")

    @classmethod
    def for_protocols(cls, protocols: str | tuple[str, ...], workers: int = 2) -> "LocalCompactor":
        """For a DB on a file system of `protocols` (an fsspec `protocol` attribute)."""
        names = (protocols,) if isinstance(protocols, str) else protocols
        return cls(workers, processes=not IN_PROCESS_PROTOCOLS.intersection(names))

    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        options = dict(storage_options)
        run = _run_in_worker if self.processes else run_compaction
        with self._lock:
            pool = self._pool
        try:
            future = pool.submit(run, spec, options)
        except BrokenProcessPool:
            pool = self._replace(pool)
            future = pool.submit(run, spec, options)
        future.add_done_callback(lambda f: self._replace_if_broken(pool, f))
        return future

    def _replace_if_broken(self, pool: Executor, future: "Future[CompactionResult]") -> None:
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            self._replace(pool)

    def _replace(self, broken: Executor) -> Executor:
        """The pool to use instead of `broken` (a new one, unless another call replaced it)."""
        with self._lock:
            if self._pool is broken and not self._closed:
                log.warning("the compaction process pool is broken; starting a new one")
                self._pool = self._new_pool()
                broken.shutdown(wait=False, cancel_futures=True)
            return self._pool

    def close(self) -> None:
        """Cancel queued work and wait for running work, so nothing writes after close."""
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=True, cancel_futures=True)


def _run_in_worker(spec: CompactionSpec, storage_options: Mapping[str, Any]) -> CompactionResult:
    """`run_compaction`, raising only errors that survive the trip back from a worker process
    (an error that does not unpickle there would break the whole pool)."""
    try:
        return run_compaction(spec, storage_options)
    except Exception as e:
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001 - any failure to round-trip: send a plain error
            raise CompactionError(
                f"compaction {spec.compaction_id} of {spec.db_root}: {type(e).__name__}: {e}"
            ) from None
        raise


CompactorFactory = Callable[[Mapping[str, Any], bool], Compactor]
"""Builds a compactor from backend options; the flag is True for DBs on an in-process file
system (memory://), whose files other processes cannot read."""


def _local_compactor(options: Mapping[str, Any], in_process: bool) -> Compactor:
    workers = int(options.get("lsm.compaction_workers", options.get("compaction_workers", 2)))
    return LocalCompactor(workers, processes=not in_process)


_modes: dict[str, CompactorFactory] = {"local": _local_compactor}


def register_compaction_mode(mode: str, factory: CompactorFactory) -> None:
    """Make `compaction_mode=<mode>` build compactors with `factory`."""
    _modes[mode] = factory


def create_compactor(mode: str, options: Mapping[str, Any], in_process: bool) -> Compactor:
    """The compactor of `mode`; a ValueError names the modes there are."""
    factory = _modes.get(mode)
    if factory is None:
        raise ValueError(
            f"unknown compaction mode {mode!r}; known modes: {', '.join(sorted(_modes))}"
        )
    return factory(options, in_process)


@dataclass
class Running:
    """A started compaction; `done` resolves when a manual compaction (a caller waits) ends."""

    spec: CompactionSpec
    pick: Pick
    future: "Future[CompactionResult]"
    deadline: float  # time.monotonic() after which it is abandoned
    done: "Future[None] | None" = None


class CompactionRegistry:
    """The compactions a DB has started, registered until installed, failed or abandoned.

    Invariant: a compaction is either registered (in `running`; its result may be installed) or
    abandoned (cancelled or timed out; its outputs are deleted once it finishes), never both.
    Thread-safe; futures are cancelled outside the lock, since cancelling runs done-callbacks.
    """

    def __init__(
        self,
        compactor: Compactor,
        storage_options: Mapping[str, Any],
        timeout_s: float,
        on_done: Callable[[], None],
    ) -> None:
        self.compactor = compactor
        self.storage_options = dict(storage_options)
        self.timeout_s = timeout_s
        self.on_done = on_done  # called from any thread when a compaction's future completes
        self._lock = threading.Lock()
        self.running: dict[str, Running] = {}
        self._abandoned: list[Running] = []
        self._held: set[str] = set()  # prefixes of compactions being submitted or finished

    def submit(self, spec: CompactionSpec, pick: Pick, done: "Future[None] | None") -> None:
        """Start `spec`; its prefix is protected from before the compactor can write under it."""
        with self._lock:
            self._held.add(spec.output_prefix)
        try:
            future = self.compactor.submit(spec, self.storage_options)
            r = Running(spec, pick, future, time.monotonic() + self.timeout_s, done)
            with self._lock:
                self.running[spec.compaction_id] = r
        finally:
            with self._lock:
                self._held.discard(spec.output_prefix)
        future.add_done_callback(lambda _: self.on_done())

    def conflicts(self) -> tuple[set[RefId], list[Reservation]]:
        """References that running compactions read, and the key ranges they write."""
        with self._lock:
            picks = [r.pick for r in self.running.values()]
        busy = {ref for p in picks for ref in p.refs()}
        reserved = [Reservation(p.output_level, *p.key_range()) for p in picks]
        return busy, reserved

    def protected_prefixes(self) -> tuple[str, ...]:
        """The output prefixes of the registered compactions and of those being submitted or
        finished (see `finishing`)."""
        with self._lock:
            running = (r.spec.output_prefix for r in self.running.values())
            return (*self._held, *running)

    def abandon(self, compaction_id: str, why: str, level: int = logging.WARNING) -> bool:
        with self._lock:
            r = self.running.pop(compaction_id, None)
            if r is not None:
                self._abandoned.append(r)
        if r is None:
            return False
        r.future.cancel()
        if r.done is not None:
            r.done.set_exception(
                CompactionError(f"LSM DB {r.spec.db_root}: compaction {compaction_id} {why}")
            )
        log.log(level, "compaction %s %s; its outputs will be deleted", compaction_id, why)
        return True

    def unregister(self, r: Running) -> bool:
        """Take a finished compaction out of the registry; False when it was abandoned."""
        with self._lock:
            return self.running.pop(r.spec.compaction_id, None) is r

    @contextmanager
    def finishing(self, r: Running) -> Iterator[bool]:
        """Unregister a compaction that finished with a result, yielding whether it was still
        registered; its prefix stays protected until the block (installing the result or
        deleting its outputs) ends."""
        with self._lock:
            self._held.add(r.spec.output_prefix)
            registered = self.running.pop(r.spec.compaction_id, None) is r
        try:
            yield registered
        finally:
            with self._lock:
                self._held.discard(r.spec.output_prefix)

    def reap(self) -> tuple[list[Running], list[CompactionSpec]]:
        """Abandon timed-out compactions; return the finished registered ones and the specs of
        the abandoned ones that finished with a result (whose outputs the caller deletes)."""
        now = time.monotonic()
        with self._lock:
            late = [c for c, r in self.running.items() if not r.future.done() and now > r.deadline]
        for cid in late:
            self.abandon(cid, "timed out")
        with self._lock:
            finished = [r for r in self.running.values() if r.future.done()]
            gone = [r for r in self._abandoned if r.future.done()]
            self._abandoned = [r for r in self._abandoned if not r.future.done()]
        produced = [
            r.spec for r in gone if not r.future.cancelled() and r.future.exception() is None
        ]
        return finished, produced

    def pending_abandoned(self) -> int:
        with self._lock:
            return len(self._abandoned)

    def drain(self, timeout_s: float) -> list[CompactionSpec]:
        """Abandon every compaction, wait up to `timeout_s` for the running ones to stop, and
        return the specs of those that finished with a result (whose outputs the caller
        deletes)."""
        with self._lock:
            ids = list(self.running)
        for compaction_id in ids:
            self.abandon(compaction_id, "stopped: the DB is closing", logging.INFO)
        with self._lock:
            abandoned, self._abandoned = self._abandoned, []
        # A cancelled future that no executor owns never counts as done for `wait`: skip those.
        wait([r.future for r in abandoned if not r.future.cancelled()], timeout=timeout_s)
        return [
            r.spec
            for r in abandoned
            if r.future.done() and not r.future.cancelled() and r.future.exception() is None
        ]
