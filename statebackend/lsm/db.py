"""`LsmDB`: one disaggregated LSM database (memtables, versions, background work, checkpoints,
savepoints).

Threads and invariants:
- Foreground methods (put/delete/get/scan/flush/compact/checkpoint/...) are called by one thread
  at a time (the owner, e.g. an operator subtask). The put path takes no lock. `get_many` reads
  many keys with their table blocks read concurrently (for an owner that reads ahead).
- Write stalls: a memtable switch waits while L0 or the immutable memtables are at their stop
  limits and sleeps at L0's slowdown trigger (`debt`). An owner that must not block (an event
  loop) calls `defer_stalls`: writes then put the switch off instead, and the owner runs
  `wait_writable` in a thread of its own whenever `writes_stalled()`, before writing more.
- One background thread flushes immutable memtables (oldest first), reaps and installs compactions,
  schedules new ones and collects garbage. State it shares with the foreground (`_imms`,
  `_version`, `_pins`, `_bg_error`, ...) is guarded by `_lock` (with `_cond`), every manifest
  commit is serialized by `_commit_lock`, and the compaction registry has its own lock.
- Readers see data exactly once or more, never zero times: a frozen memtable is appended to
  `_imms` before `_mem` is replaced, and a flushed memtable leaves `_imms` only after `_version`
  includes its table; get reads `_mem`, then `_imms`, then `_version`, in that order.
- A background error (a flush that failed all retries, a fenced writer, ...) is sticky: every
  later put/delete/flush/checkpoint raises it. Reopen the DB to recover from the last committed
  manifest.
- A failed compaction (its submit raised, it raised, or its install commit failed) is retried, by
  re-picking, after a back-off that doubles per consecutive failure (from `retry_backoff_s`); a
  manual compaction waits through the retries. After MAX_COMPACTION_FAILURES in a row the DB
  stops with a sticky `CompactionError` naming it.
- Files are named, protected, installed or deleted by the rules of docs/lsm-protocol.md (with
  `files`); an invalid result counts as a failed compaction. Installed compactions are counted
  as remote when their result says it ran on a compaction service (`CompactionResult.remote`).
- A version may reference (clipped) tables of other roots; reads go through `reads`, opening
  through `opening`, and the reference pins and retired roots of shared files through
  `sharing` (run after each collection, with `_gc_lock` held, which a savepoint also takes).
- TTL: a compaction's TTL cut-off is the time of the DB's `clock` (the backend's), not wall time.
"""

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import xxhash

from statebackend.dfs import FileRef, filesystem, write_bytes
from statebackend.errors import CompactionError
from statebackend.lsm import files, reads
from statebackend.lsm.cache import CacheStats, TableCache
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec
from statebackend.lsm.compactor import CompactionRegistry, Compactor, LocalCompactor, Running
from statebackend.lsm.debt import WriteStalls, slows_down, stop_cause
from statebackend.lsm.gc import GarbageCollector, GcResult
from statebackend.lsm.manifest import Manifest, ManifestStore, encode
from statebackend.lsm.memtable import Memtable
from statebackend.lsm.merge import merge_runs
from statebackend.lsm.meta import TableMeta
from statebackend.lsm.opening import delete_markers, open_root
from statebackend.lsm.options import LsmOptions
from statebackend.lsm.picker import Pick, Picker, PickerOptions
from statebackend.lsm.pins import delete_pin, write_pin
from statebackend.lsm.sharing import SharedFiles, retire
from statebackend.lsm.table import TableBuilder, remove_quietly
from statebackend.lsm.version import Version, VersionEdit
from statebackend.ttl import Clock, system_clock

log = logging.getLogger(__name__)

T = TypeVar("T")
_MISSING = object()
BG_POLL_S = 0.1
# Consecutive failed compactions after which the DB stops (a sticky CompactionError).
MAX_COMPACTION_FAILURES = 5


class LsmDB:
    """A disaggregated LSM DB rooted at an fsspec URL; see the module docstring for threading.

    `restore_manifest` opens the version of that (pinned) manifest instead of the newest one,
    verified against `restore_ref` (the snapshot handle's reference to it) when given; `fresh`
    opens an empty version; `adopt` opens a new root (one nobody has used: nothing is read there)
    with that version, which references tables of other roots (docs/lsm-protocol.md, "Adopting
    versions of other databases"). Pins of retained checkpoints are kept, less those released by
    markers. Opening reads the root in few round trips (see `opening`). `clock` (milliseconds
    since the epoch) decides which entries compactions drop as expired.
    """

    def __init__(
        self,
        root: str,
        options: LsmOptions | None = None,
        storage_options: Mapping[str, Any] | None = None,
        compactor: Compactor | None = None,
        restore_manifest: int | None = None,
        fresh: bool = False,
        clock: Clock = system_clock,
        adopt: Version | None = None,
        restore_ref: FileRef | None = None,
    ) -> None:
        self.root = root.rstrip("/")
        self.o = o = options or LsmOptions()
        self._clock = clock
        self.storage_options = dict(storage_options or {})
        self.fs, self._root_path = filesystem(self.root, self.storage_options)
        self._manifests = ManifestStore(self.fs, self._root_path, o.num_levels)
        opening = open_root(
            self._manifests, self.root, self.storage_options, restore_manifest, restore_ref,
            fresh, adopt,
        )
        self._writer = opening.writer
        self._shared = SharedFiles(
            self.root, self.storage_options, o.gc_grace_s, opening.holds, adopt is not None
        )
        version = self._version = opening.version
        self._pins: dict[int, int] = dict(opening.pins)
        # Reentrant: cancelling a future under the lock runs its done-callback, which notifies.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._commit_lock = threading.Lock()
        self._gc_lock = threading.Lock()
        try:
            self._shared.cover(version.foreign())  # reference pins first
            self._manifest = self._writer.commit(version, self._pins)  # claims the epoch
        except BaseException:
            if adopt is not None:  # nothing will ever commit in this new root
                self._shared.references.reconcile({})
            raise
        self.epoch = self._writer.epoch
        delete_markers(self.fs, self._root_path, opening.obsolete_markers)
        self._mem = Memtable()
        self._imms: tuple[Memtable, ...] = ()  # oldest first
        self._in_use: dict[int, tuple[Version, int]] = {}  # versions held by iterators, refcounted
        self._tables = TableCache(
            self.fs,
            self._root_path,
            o.block_cache_bytes,
            o.file_cache_bytes,
            o.local_dir or tempfile.gettempdir(),
            self.storage_options,
            o.table,
        )
        self._own_compactor = compactor is None
        self.compactor: Compactor = compactor or LocalCompactor.for_protocols(
            self.fs.protocol, o.compaction_workers
        )
        self._picker = Picker(PickerOptions.of(o))
        self._gc = GarbageCollector(
            self.fs, self._root_path, self._manifests, o.gc_grace_s, o.manifest_retention
        )
        self._compactions = CompactionRegistry(
            self.compactor, self.storage_options, o.compaction_timeout_s, self._notify
        )
        self._manual: list[Future[None]] = []  # requests for a full compaction
        self._flushing: str | None = None  # name of the table a flush is writing
        self._seq = 0
        self._bg_error: BaseException | None = None
        self._wake = False  # set with _cond held when the background thread has new work
        self._compaction_failures = 0
        self._compaction_retry_at = 0.0  # time.monotonic() before which none is started
        self._closed = False
        self._next_gc = time.monotonic() + o.gc_interval_s
        self.compactions_installed = 0
        # Installed compactions by where they ran.
        self.compactions_remote = 0
        self.compaction_cpu_seconds = {"local": 0.0, "remote": 0.0}
        self.stalls = WriteStalls()  # the writer's slowdowns and stops (statebackend.lsm.debt)
        self._defer_stalls = False  # see defer_stalls
        self._thread = threading.Thread(
            target=self._bg_loop, name=f"lsm-bg-{self.epoch}", daemon=True
        )
        self._thread.start()

    # ----------------------------------------------------------------------------- writes

    def put(self, key: bytes, value: bytes) -> None:
        if self._bg_error is not None:
            raise self._bg_error
        mem = self._mem
        mem.put(key, value)
        if mem.size >= self.o.memtable_bytes:
            self._make_room()

    def delete(self, key: bytes) -> None:
        if self._bg_error is not None:
            raise self._bg_error
        mem = self._mem
        mem.put(key, None)
        if mem.size >= self.o.memtable_bytes:
            self._make_room()

    def defer_stalls(self) -> None:
        """From now on, a write never waits for a stall: a memtable switch that would stop or
        slow down is put off (the memtable grows beyond `memtable_bytes`) until the owner calls
        `wait_writable`, in a thread of its own, which it does before it writes more whenever
        `writes_stalled()` says so. An owner on an event loop thus awaits a stall."""
        self._defer_stalls = True

    def writes_stalled(self) -> bool:
        """Whether a memtable switch is put off (see `defer_stalls`)."""
        return self._mem.size >= self.o.memtable_bytes

    def wait_writable(self) -> None:
        """Make the memtable switch put off, if any, waiting out a stop and sleeping a slowdown
        as a write would have (blocks: call it off the event loop)."""
        if self._mem.size >= self.o.memtable_bytes:
            self._switch_memtable()

    def _make_room(self) -> None:
        """Switch the memtable now, or put the switch off if it would stall and stalls are
        deferred (`defer_stalls`)."""
        self._switch_memtable(defer=self._defer_stalls)

    def _switch_memtable(self, defer: bool = False) -> None:
        """Freeze the memtable; first wait (a stop) or sleep (a slowdown) if due (see `debt`),
        or, with `defer`, return without switching instead."""
        o = self.o
        with self._cond:
            if defer and (
                self._stop_cause_locked() is not None
                or slows_down(len(self._version.levels[0]), o)
            ):
                return
            try:
                while cause := self._stop_cause_locked():
                    self.stalls.stopped(cause)
                    self._cond.wait(0.5)
            finally:
                self.stalls.resumed()
            l0 = len(self._version.levels[0])
            self._imms = self._imms + (self._mem,)
            self._mem = Memtable()
            self._wake_locked()
        self.stalls.slow_down(l0, o)

    def _stop_cause_locked(self) -> str | None:
        self._check_open_locked()
        return stop_cause(len(self._imms), len(self._version.levels[0]), self.o)

    def _check_open_locked(self) -> None:
        if self._bg_error is not None:
            raise self._bg_error
        if self._closed:
            raise RuntimeError(f"LSM DB {self.root} is closed")

    def flush(self) -> None:
        """Make every write so far durable: return once it is in a committed manifest."""
        if self._mem.data:
            self._switch_memtable()
        with self._cond:
            while self._imms:
                self._check_open_locked()
                self._cond.wait(0.5)
            self._check_open_locked()

    # ----------------------------------------------------------------------------- reads

    def get(self, key: bytes) -> bytes | None:
        value = self._mem.data.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        for imm in reversed(self._imms):
            value = imm.data.get(key, _MISSING)
            if value is not _MISSING:
                return value  # type: ignore[return-value]
        return reads.get(self._version, key, self._tables)[1]

    def get_many(self, keys: list[bytes]) -> dict[bytes, bytes | None]:
        """`get` of each of `keys`, the table blocks they need read concurrently (see
        `reads.get_many`). Called by the owner, or for it while it waits (never while it writes)."""
        found: dict[bytes, bytes | None] = {}
        rest = []
        runs = (self._mem, *reversed(self._imms))
        for key in keys:
            for run in runs:
                value = run.data.get(key, _MISSING)
                if value is not _MISSING:
                    found[key] = value  # type: ignore[assignment]
                    break
            else:
                rest.append(key)
        if rest:
            found.update(reads.get_many(self._version, rest, self._tables))
        return found

    def scan(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Entries with start <= key < end, ascending, as of this call (later writes are unseen)."""
        with self._lock:
            memtables = [self._mem.range(start, end)]
            imms = self._imms
            version = self._version
            count = self._in_use.get(id(version), (version, 0))[1]
            self._in_use[id(version)] = (version, count + 1)
        memtables += [imm.range(start, end) for imm in reversed(imms)]
        # Empty memtables are left out: a scan of one run is passed through, not merged.
        runs: list[Iterator[tuple[bytes, bytes | None]]] = [iter(m) for m in memtables if m]
        runs += reads.runs(version, start, end, self._tables)
        entries = self._live_entries(runs, version)
        next(entries)  # start it inside its try, so that dropping it unregisters the version
        return entries  # type: ignore[return-value]

    def _live_entries(
        self, runs: list[Iterator[tuple[bytes, bytes | None]]], version: Version
    ) -> Iterator[tuple[bytes, bytes] | None]:
        try:
            yield None  # consumed by scan()
            for key, value in merge_runs(runs):
                if value is not None:
                    yield key, value
        finally:
            with self._lock:
                v, count = self._in_use[id(version)]
                if count == 1:
                    del self._in_use[id(version)]
                else:
                    self._in_use[id(version)] = (v, count - 1)

    # ----------------------------------------------------------------------------- checkpoints

    def checkpoint(self, checkpoint_id: int) -> FileRef:
        """Flush and pin the resulting version; returns the pinned manifest file."""
        self.flush()
        m = self._commit(None, pin=checkpoint_id)
        data = encode(m)  # deterministic: the bytes that were written
        url = files.manifest_path(self.root, m.number)
        return FileRef(url, len(data), xxhash.xxh3_64_hexdigest(data))

    def release_checkpoint(self, checkpoint_id: int) -> None:
        """Unpin a checkpoint's version; its files become garbage once nothing else uses them."""
        if checkpoint_id in self._pins:
            self._commit(None, unpin=checkpoint_id)

    def release_checkpoint_of(self, root: str, checkpoint_id: int) -> None:
        """Release a checkpoint of another root, which has no writer any more (an old subtask's
        after a rescale): a release marker there, then that root's retired collection."""
        self._shared.release_checkpoint(root, checkpoint_id)

    def savepoint(self, directory: str) -> tuple[FileRef, str]:
        """Flush and pin the committed version with a savepoint pin, and copy its manifest into
        `directory` (an fsspec URL); no table is copied. Returns the copy and the pin's name.
        The pin holds until `dispose_savepoint` deletes it (docs/lsm-protocol.md, "Savepoint
        pins")."""
        self.flush()
        token = files.new_savepoint_token()
        pin = files.savepoint_pin_name(token)
        with self._gc_lock:  # no collection between choosing the manifest and pinning it
            m = self._manifest
            payload = {"manifest": m.number, "savepoint": directory}
            write_pin(self.fs, self._root_path, pin, payload)
        try:
            url = f"{directory.rstrip('/')}/{files.savepoint_manifest_name(token)}"
            return write_bytes(url, encode(m), self.storage_options), pin
        except BaseException:
            delete_pin(self.fs, self._root_path, pin)
            raise

    @property
    def pins(self) -> dict[int, int]:
        """Retained checkpoints: checkpoint id -> manifest number."""
        with self._lock:
            return dict(self._pins)

    @property
    def version(self) -> Version:
        return self._version

    @property
    def manifest_number(self) -> int:
        return self._manifest.number

    # ----------------------------------------------------------------------------- compaction

    def compact(self) -> None:
        """Flush, then merge every table into the deepest level (dropping tombstones); wait."""
        self.flush()
        done: Future[None] = Future()
        with self._cond:
            self._check_open_locked()
            self._manual.append(done)
            self._wake_locked()
        done.result()

    def running_compactions(self) -> list[str]:
        return list(self._compactions.running)

    def abandoned_compactions(self) -> int:
        """Cancelled or timed-out compactions still running (their outputs get deleted)."""
        return self._compactions.pending_abandoned()

    def cancel_compaction(self, compaction_id: str) -> bool:
        """Deregister a running compaction; its result will be discarded and its outputs deleted."""
        return self._compactions.abandon(compaction_id, "cancelled")

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until nothing is flushing or compacting and no level needs compaction."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_open_locked()
                needs = self.o.auto_compact and self._picker.scores(self._version)[0][0] >= 1
                if not (self._imms or self._compactions.running or self._manual or needs):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"LSM DB {self.root} not idle after {timeout}s")
                self._cond.wait(0.05)

    # ----------------------------------------------------------------------------- gc, stats, close

    def collect_garbage(self) -> GcResult:
        with self._gc_lock:
            # List first: a table written after the listing is not a candidate, and one written
            # before it is live or protected in what is taken next (docs/lsm-protocol.md).
            listed = files.list_tables(self.fs, self._root_path)
            with self._lock:
                versions = [self._version, *(v for v, _ in self._in_use.values())]
                protected = self._compactions.protected_prefixes()
                if self._flushing is not None:
                    protected += (self._flushing,)
            in_use = set().union(*(v.names() for v in versions))
            result = self._gc.collect(self.epoch, in_use, protected, listed)
            dropped = self._shared.after_collection(versions, result.foreign)
        for root, name in [*(("", n) for n in result.deleted_tables), *dropped]:
            self._tables.evict(root, name)
        return result

    def cache_stats(self) -> CacheStats:
        return self._tables.stats()

    def close(self, retire_root: bool = False) -> None:
        """Stop background work. Writes not yet flushed are dropped (call flush() first).

        `retire_root`: no writer will open this root again except to restore a pinned version,
        so its collection may be run by anyone (docs/lsm-protocol.md, "Retired roots")."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._wake_locked()
        self._thread.join()
        # A compactor outlives the DB when it is shared: wait for this DB's running work, so no
        # compaction writes below the root after close, and delete what it wrote.
        for spec in self._compactions.drain(self.o.compaction_timeout_s):
            self._delete_outputs(spec)
        for request in self._manual:
            request.set_exception(RuntimeError(f"LSM DB {self.root} closed"))
        if self._own_compactor:
            self.compactor.close()
        self._tables.close()
        if retire_root and self._writer.fenced is None:
            retire(self.root, self.storage_options, self.epoch, self._pins)

    # ----------------------------------------------------------------------------- background

    def _bg_loop(self) -> None:
        while True:
            try:
                self._bg_step()
            except BaseException as e:  # noqa: BLE001 - surfaced to the writer, never lost
                log.error("LSM DB %s: background work failed: %s", self.root, e, exc_info=True)
                with self._cond:
                    self._bg_error = e
                    for request in self._manual:
                        request.set_exception(e)
                    self._manual.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                # Timers (compaction deadlines, gc) are polled; events set _wake and notify.
                if not self._wake and not self._closed:
                    self._cond.wait(BG_POLL_S)
                self._wake = False
                if self._closed:
                    return

    def _wake_locked(self) -> None:
        self._wake = True
        self._cond.notify_all()

    def _bg_step(self) -> None:
        while self._imms and not self._closed:
            self._flush_one()
        self._reap()
        if self._manual:
            self._start_manual()
        elif self.o.auto_compact:
            self._schedule()
        if time.monotonic() >= self._next_gc:
            self.collect_garbage()
            self._next_gc = time.monotonic() + self.o.gc_interval_s

    def _flush_one(self) -> None:
        imm = self._imms[0]
        keys, values = imm.batch()

        def write() -> TableMeta:
            self._seq += 1
            name = files.flush_table_name(self.epoch, self._seq)
            with self._lock:
                self._flushing = name
            path = files.table_path(self._root_path, name)
            try:
                with files.open_for_writing(self.fs, path) as sink:
                    builder = TableBuilder(sink, self.o.table, "flush", name)
                    builder.add_batch(keys, values)
                    return builder.finish()
            except BaseException:
                remove_quietly(self.fs, path)
                raise

        try:
            meta = self._retry(write, "flush")
            self._commit(VersionEdit(added=((0, meta),)))
        finally:
            with self._lock:
                self._flushing = None
        with self._cond:
            self._imms = self._imms[1:]
            self._cond.notify_all()
        log.debug("flushed %d entries to %s", meta.entries, meta.name)

    def _commit(
        self, edit: VersionEdit | None, pin: int | None = None, unpin: int | None = None
    ) -> Manifest:
        with self._commit_lock:
            version = self._version.apply(edit) if edit is not None else self._version
            pins = {c: n for c, n in self._pins.items() if c != unpin}
            m = self._retry(
                lambda: self._writer.commit(version, pins, pin_self=pin), "manifest write"
            )
            with self._cond:
                self._version = version
                self._pins = dict(m.pins)
                self._manifest = m
                self._cond.notify_all()
            return m

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        for attempt in range(self.o.io_retries + 1):
            try:
                return fn()
            except OSError as e:
                if attempt == self.o.io_retries:
                    raise
                log.warning("%s: %s failed (attempt %d), retrying: %s", self.root, what, attempt, e)
                time.sleep(self.o.retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _schedule(self) -> None:
        while len(self._compactions.running) < self.o.max_compactions:
            if time.monotonic() < self._compaction_retry_at:
                return  # backing off after a failed compaction
            busy, reserved = self._compactions.conflicts()
            pick = self._picker.pick(self._version, busy, reserved)
            if pick is None:
                return
            if pick.trivial_move:
                (t,) = pick.inputs[0].tables
                self._commit(VersionEdit(((pick.inputs[0].level, t),), ((pick.output_level, t),)))
                log.info("trivial move of %s to level %d", t.name, pick.output_level)
            else:
                self._submit(pick)

    def _start_manual(self) -> None:
        if self._compactions.running or time.monotonic() < self._compaction_retry_at:
            return  # wait for running compactions to drain: the full compaction takes every table
        request = self._manual.pop(0)
        pick = self._picker.pick_all(self._version)
        if pick is None:
            request.set_result(None)
        else:
            self._submit(pick, request)

    def _submit(self, pick: Pick, done: "Future[None] | None" = None) -> None:
        o = self.o
        spec = pick.spec(self.root, self.epoch, o.target_file_size, o.table, self._clock())
        try:
            self._compactions.submit(spec, pick, done)
        except Exception as e:  # noqa: BLE001 - retried like a compaction that failed
            self._compaction_failed(spec.compaction_id, done, e)
            return
        log.info("compaction %s: %s", spec.compaction_id, pick)

    def _notify(self) -> None:
        with self._cond:
            self._wake_locked()

    def _reap(self) -> None:
        finished, abandoned = self._compactions.reap()
        for spec in abandoned:
            self._delete_outputs(spec)
        for r in finished:
            self._finish(r)

    def _finish(self, r: Running) -> None:
        """Install a finished compaction's result, or delete its outputs (docs/lsm-protocol.md,
        "Install or delete"); its prefix stays protected until one or the other is done."""
        spec = r.spec
        try:
            result = r.future.result()
        except Exception as e:  # noqa: BLE001 - a failed compaction is retried by the picker
            if self._compactions.unregister(r):  # else abandoned meanwhile, and reported so
                self._compaction_failed(spec.compaction_id, r.done, e)
            return
        with self._compactions.finishing(r) as registered:
            self._install_or_delete(r, result, registered)

    def _install_or_delete(self, r: Running, result: CompactionResult, registered: bool) -> None:
        spec = r.spec
        if not registered:
            log.warning("compaction %s was abandoned; deleting its outputs", spec.compaction_id)
            self._delete_outputs(spec)
            return
        try:
            files.validate_result(spec, result)
        except ValueError as e:
            log.error("compaction %s returned an invalid result: %s", spec.compaction_id, e)
            self._delete_outputs(spec)
            self._compaction_failed(spec.compaction_id, r.done, e)
            return
        with self._lock:
            live = {(n, t.ref_id) for n, t in self._version.tables()}
            inputs_live = all((i.level, t.ref_id) in live for i in r.pick.inputs for t in i.tables)
        if not inputs_live:
            log.warning("compaction %s is stale; deleting its outputs", spec.compaction_id)
            self._delete_outputs(spec)
            return
        edit = VersionEdit(
            removed=tuple((i.level, t) for i in r.pick.inputs for t in i.tables),
            added=tuple((spec.output_level, t) for t in result.outputs),
        )
        try:
            self._commit(edit)
        except OSError as e:
            # The outputs may be referenced by a manifest whose write only seemed to fail: leave
            # them to the garbage collector, which keeps what the retained manifests reference.
            self._compaction_failed(spec.compaction_id, r.done, e)
            return
        self._compaction_failures = 0
        self.compactions_installed += 1
        ran = "remote" if result.remote else "local"
        self.compactions_remote += result.remote
        self.compaction_cpu_seconds[ran] += result.stats.cpu_seconds
        if r.done is not None:
            r.done.set_result(None)
        log.info("compaction %s installed %d outputs", spec.compaction_id, len(result.outputs))

    def _compaction_failed(
        self, compaction_id: str, done: "Future[None] | None", e: BaseException
    ) -> None:
        """Retry after a back-off (a manual request waits for the retry); after too many
        failures in a row, raise the sticky CompactionError (`_bg_loop` fails the requests)."""
        self._compaction_failures += 1
        failures = self._compaction_failures
        if done is not None:
            with self._lock:
                self._manual.insert(0, done)
        if failures >= MAX_COMPACTION_FAILURES:
            raise CompactionError(
                f"LSM DB {self.root}: {failures} compactions failed in a row; the last, "
                f"{compaction_id}, with {type(e).__name__}: {e}"
            ) from e
        delay = self.o.retry_backoff_s * 2 ** (failures - 1)
        self._compaction_retry_at = time.monotonic() + delay
        why = f"{type(e).__name__}: {e}"
        log.warning("compaction %s failed (%d in a row), retrying in %.3fs: %s", compaction_id,
                    failures, delay, why)

    def _delete_outputs(self, spec: CompactionSpec) -> None:
        files.delete_outputs(self.fs, self._root_path, spec.output_prefix)

