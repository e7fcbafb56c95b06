"""Failed compactions: retried by the DB, confined to their DB when the compactor is shared.

A `LocalCompactor` with worker processes is shared by DBs, so an error in one DB's compaction (a
corrupt table), a worker killed with SIGKILL, or a submit that fails must cost that compaction a
retry at most, never the other DBs their compactions.
"""

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from statebackend.errors import CompactionError, StateError
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec
from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from tests.lsm.options import small_options

TIMEOUT_S = 120.0


def key(i: int) -> bytes:
    return b"k%06d" % i


def write(db: LsmDB, lo: int, hi: int, tag: bytes) -> dict[bytes, bytes]:
    written = {key(i): tag + b"%d" % i for i in range(lo, hi)}
    for k, v in written.items():
        db.put(k, v)
    db.flush()
    return written


def table_path(db: LsmDB, name: str) -> Path:
    return Path(db._root_path) / "tables" / name


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `fn` in a thread; the list receives what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def wait_until(predicate: Callable[[], object], what: str) -> None:
    """Poll a state the test cannot be notified of, for at most TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not hold within {TIMEOUT_S}s"
        time.sleep(0.01)


@pytest.fixture
def process_compactor():  # noqa: ANN201
    compactor = LocalCompactor(2, processes=True)
    yield compactor
    compactor.close()


def test_a_corrupt_table_fails_its_db_only_while_another_db_keeps_compacting(
    tmp_path: Path, process_compactor: LocalCompactor
) -> None:
    options = small_options(auto_compact=False, block_cache_bytes=0)
    damaged = LsmDB(f"file://{tmp_path}/damaged", options, compactor=process_compactor)
    healthy = LsmDB(f"file://{tmp_path}/healthy", options, compactor=process_compactor)
    write(damaged, 0, 300, b"a")
    write(damaged, 0, 300, b"b")
    newest = damaged.version.levels[0][0]
    path = table_path(damaged, newest.name)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01  # inside the first data block: the compaction cannot read it
    path.write_bytes(bytes(data))

    failing, raised = in_thread(damaged.compact)
    model: dict[bytes, bytes] = {}
    for round_ in range(3):  # meanwhile, and after, the healthy DB compacts in the same pool
        model.update(write(healthy, 0, 400, b"r%d-" % round_))
        model.update(write(healthy, 200, 600, b"s%d-" % round_))
        healthy.compact()
        assert not healthy.version.levels[0]
    failing.join(TIMEOUT_S)
    assert not failing.is_alive()
    (error,) = raised
    assert isinstance(error, CompactionError) and isinstance(error, StateError)
    assert damaged.root in str(error) and "CorruptTableError" in str(error)
    assert newest.name in str(error)
    model.update(write(healthy, 0, 100, b"after-"))
    healthy.compact()
    assert dict(healthy.scan(None, None)) == model
    assert healthy.compactions_installed == 4
    damaged.close()
    healthy.close()


def test_a_worker_killed_mid_compaction_fails_that_run_which_is_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    others = {p.pid for p in multiprocessing.active_children()}
    compactor = LocalCompactor(1, processes=True)
    db = LsmDB(f"file://{tmp_path}/db", small_options(auto_compact=False), compactor=compactor)
    try:
        model = write(db, 0, 300, b"a")
        model.update(write(db, 100, 400, b"b"))
        # One input becomes a FIFO: opening it blocks the worker until the worker is killed.
        path = table_path(db, db.version.levels[0][0].name)
        saved = path.with_suffix(".saved")
        shutil.copyfile(path, saved)
        path.unlink()
        os.mkfifo(path)

        compacting, raised = in_thread(db.compact)
        blocked: list[int] = []

        def a_worker_is_blocked_on_the_fifo() -> bool:
            for p in multiprocessing.active_children():
                if p.pid not in others and _wchan(p.pid) == "wait_for_partner":
                    blocked.append(p.pid)  # type: ignore[arg-type]
            return bool(blocked)

        wait_until(a_worker_is_blocked_on_the_fifo, "a worker blocked opening the input")
        (first,) = db.running_compactions()
        os.replace(saved, path)  # the retry reads the real table
        os.kill(blocked[0], signal.SIGKILL)
        compacting.join(TIMEOUT_S)
        assert not compacting.is_alive() and not raised
        assert db.compactions_installed == 1 and not db.version.levels[0]
        assert f"compaction {first} failed (1 in a row)" in caplog.text
        assert "BrokenProcessPool" in caplog.text
        assert dict(db.scan(None, None)) == model
        # The DB and its compactor stay usable.
        model.update(write(db, 0, 50, b"c"))
        db.compact()
        assert db.compactions_installed == 2 and dict(db.scan(None, None)) == model
    finally:
        db.close()
        compactor.close()


def _wchan(pid: int | None) -> str:
    """What the kernel says the process waits in ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_idle_workers_killed_the_pool_is_replaced_and_compactions_go_on(tmp_path: Path) -> None:
    others = {p.pid for p in multiprocessing.active_children()}
    compactor = LocalCompactor(2, processes=True)
    db = LsmDB(f"file://{tmp_path}/db", small_options(auto_compact=False), compactor=compactor)
    try:
        model = write(db, 0, 300, b"a")
        model.update(write(db, 100, 400, b"b"))
        db.compact()  # starts the pool's workers
        workers = [p for p in multiprocessing.active_children() if p.pid not in others]
        assert workers
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for p in workers:
            p.join(TIMEOUT_S)
        # The broken pool is found broken by the submit or by the compaction's future: either
        # way the compaction runs in a new pool.
        model.update(write(db, 0, 200, b"c"))
        db.compact()
        assert db.compactions_installed == 2 and dict(db.scan(None, None)) == model
    finally:
        db.close()
        compactor.close()


class SubmitFailsOnce:
    """A compactor whose first submit raises (as a pool that cannot start a worker would)."""

    def __init__(self, inner: LocalCompactor) -> None:
        self.inner = inner
        self.refused: list[str] = []

    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        if not self.refused:
            self.refused.append(spec.compaction_id)
            raise OSError("cannot start a compaction worker: too many open files")
        return self.inner.submit(spec, storage_options)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("manual", [True, False], ids=["manual", "automatic"])
def test_a_submit_that_fails_once_is_retried(tmp_path: Path, manual: bool) -> None:
    compactor = SubmitFailsOnce(LocalCompactor(1, processes=False))
    db = LsmDB(
        f"memory://{tmp_path}/db", small_options(auto_compact=not manual), compactor=compactor
    )
    try:
        model: dict[bytes, bytes] = {}
        for n in range(4):
            model.update(write(db, n * 50, n * 50 + 200, b"%d" % n))
        if manual:
            db.compact()
        else:
            db.wait_idle(TIMEOUT_S)
        assert compactor.refused and db.compactions_installed >= 1
        model.update(write(db, 0, 100, b"later"))  # the DB keeps working
        assert dict(db.scan(None, None)) == model
    finally:
        db.close()
        compactor.close()
