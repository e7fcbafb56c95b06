"""The file lifecycle rules of docs/lsm-protocol.md at the DB, each at the moment that would break
it: a result that fails validation is deleted and retried, never installed; a garbage collection
that runs while a flush writes, while a compaction is submitted, or while a result is installed
(with no grace period) keeps the files that work is about to commit."""

import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from statebackend.lsm import files
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, run_compaction
from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from tests.lsm.options import small_options

TIMEOUT_S = 60.0


def key(i: int) -> bytes:
    return b"k%06d" % i


def write(db: LsmDB, lo: int, hi: int, tag: bytes) -> dict[bytes, bytes]:
    written = {key(i): tag + b"%d" % i for i in range(lo, hi)}
    for k, v in written.items():
        db.put(k, v)
    db.flush()
    return written


def tables(db: LsmDB) -> set[str]:
    return set(files.list_tables(db.fs, db._root_path))


@pytest.fixture
def threads():  # noqa: ANN201
    compactor = LocalCompactor(1, processes=False)
    yield compactor
    compactor.close()


# ----------------------------------------------------------------------------------- validation


class FirstResultBad:
    """Runs compactions for real; the first result is changed by `spoil` before it is returned."""

    def __init__(
        self, inner: LocalCompactor, spoil: Callable[[CompactionSpec, CompactionResult], Any]
    ) -> None:
        self.inner = inner
        self.spoil = spoil
        self.specs: list[CompactionSpec] = []

    def submit(
        self, spec: CompactionSpec, storage_options: Mapping[str, Any]
    ) -> "Future[CompactionResult]":
        self.specs.append(spec)
        result = run_compaction(spec, storage_options)
        future: Future[CompactionResult] = Future()
        future.set_result(self.spoil(spec, result) if len(self.specs) == 1 else result)
        return future

    def close(self) -> None:
        pass


def _named_as_an_input(spec: CompactionSpec, result: CompactionResult) -> CompactionResult:
    victim = spec.inputs[0].tables[0].name
    return replace(result, outputs=(replace(result.outputs[0], name=victim), *result.outputs[1:]))


def _outside_the_inputs(spec: CompactionSpec, result: CompactionResult) -> CompactionResult:
    last = replace(result.outputs[-1], largest=b"\xff" * 8)
    return replace(result, outputs=(*result.outputs[:-1], last))


@pytest.mark.parametrize(
    "spoil", [_named_as_an_input, _outside_the_inputs], ids=["input name", "key range"]
)
def test_an_invalid_result_is_deleted_not_installed_and_the_compaction_is_retried(
    tmp_path: Path,
    threads: LocalCompactor,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[CompactionSpec, CompactionResult], CompactionResult],
) -> None:
    caplog.set_level(logging.WARNING)
    compactor = FirstResultBad(threads, spoil)
    db = LsmDB(f"file://{tmp_path}/db", small_options(auto_compact=False), compactor=compactor)
    try:
        model = write(db, 0, 300, b"a")
        model.update(write(db, 100, 400, b"b"))
        inputs = db.version.names()
        db.compact()
        first, retry = compactor.specs
        assert db.compactions_installed == 1
        assert {t.creator for _, t in db.version.tables()} == {f"compaction:{retry.compaction_id}"}
        assert not [n for n in tables(db) if n.startswith(first.output_prefix)]
        assert inputs <= tables(db)  # a bad result's names delete nothing outside its prefix
        assert dict(db.scan(None, None)) == model
        assert f"compaction {first.compaction_id} returned an invalid result" in caplog.text
        assert f"compaction {first.compaction_id} failed (1 in a row)" in caplog.text
    finally:
        db.close()


# ----------------------------------------------------------------------------------- ordering


class HookedFileSystem(MemoryFileSystem):
    """An in-memory file system of its own that calls `hook(op, path)` before it creates a file
    ("create") and before it reads a whole file ("cat")."""

    protocol = "hooked"
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    hook: Callable[[str, str], None] | None = None

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.removeprefix("hooked://"))

    def _call(self, op: str, path: str) -> None:
        hook = type(self).hook
        if hook is not None:
            hook(op, path)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "w" in mode or "x" in mode:
            self._call("create", path)
        return super()._open(path, mode, **kw)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any):  # noqa: ANN201
        self._call("cat", path)
        return super().cat_file(path, start, end, **kw)


fsspec.register_implementation("hooked", HookedFileSystem, clobber=True)


@pytest.fixture
def hooked_db(threads: LocalCompactor):  # noqa: ANN201
    HookedFileSystem.hook = None
    db = LsmDB(
        f"hooked://lifecycle-{uuid.uuid4().hex}/db",
        small_options(auto_compact=False, gc_grace_s=0),
        compactor=threads,
    )
    yield db
    HookedFileSystem.hook = None
    db.close()


def _is_manifest(path: str) -> bool:
    return f"/{files.MANIFEST_DIR}/" in path


def test_gc_while_a_flush_writes_keeps_the_flushed_table(hooked_db: LsmDB) -> None:
    """The flush writes its table after the collector took what is live and protected, and
    commits it after the collector swept."""
    db = hooked_db
    model = write(db, 0, 50, b"a")
    big = b"x" * db.o.memtable_bytes
    written, swept = threading.Event(), threading.Event()
    started: list[str] = []

    def hook(op: str, path: str) -> None:
        if op == "cat" and _is_manifest(path) and not started:
            started.append(path)  # the collector reads the manifests: a flush starts now
            db.put(b"late", big)  # freezes the memtable; the background thread flushes it
            assert written.wait(TIMEOUT_S), "the flush did not write its table"
        elif op == "create" and _is_manifest(path) and started and not written.is_set():
            written.set()  # the flushed table is written; commit after the sweep
            assert swept.wait(TIMEOUT_S), "the collector did not finish"

    HookedFileSystem.hook = hook
    db.collect_garbage()
    swept.set()
    db.flush()
    model[b"late"] = big
    assert written.is_set()
    assert db.version.names() <= tables(db)
    assert dict(db.scan(None, None)) == model


def test_gc_while_a_compaction_is_submitted_keeps_its_outputs(
    tmp_path: Path, threads: LocalCompactor
) -> None:
    """The compactor writes the outputs before `submit` returns; the collector runs meanwhile."""

    class CollectsDuringSubmit:
        db: LsmDB

        def submit(
            self, spec: CompactionSpec, storage_options: Mapping[str, Any]
        ) -> "Future[CompactionResult]":
            result = run_compaction(spec, storage_options)
            self.db.collect_garbage()
            future: Future[CompactionResult] = Future()
            future.set_result(result)
            return future

        def close(self) -> None:
            pass

    compactor = CollectsDuringSubmit()
    options = small_options(auto_compact=False, gc_grace_s=0)
    db = LsmDB(f"file://{tmp_path}/db", options, compactor=compactor)
    compactor.db = db
    try:
        model = write(db, 0, 300, b"a")
        model.update(write(db, 100, 400, b"b"))
        db.compact()
        assert db.compactions_installed == 1
        assert db.version.names() <= tables(db)
        assert dict(db.scan(None, None)) == model
    finally:
        db.close()


def test_gc_while_a_result_is_installed_keeps_its_outputs(hooked_db: LsmDB) -> None:
    """The collector runs after the compaction left the registry, before its commit."""
    db = hooked_db
    model = write(db, 0, 300, b"a")
    model.update(write(db, 100, 400, b"b"))
    collected: list[object] = []

    def hook(op: str, path: str) -> None:
        if op == "create" and _is_manifest(path) and not collected:
            collected.append(db.collect_garbage())  # the install's commit starts

    HookedFileSystem.hook = hook
    db.compact()
    assert collected and db.compactions_installed == 1
    assert db.version.names() <= tables(db)
    assert dict(db.scan(None, None)) == model
