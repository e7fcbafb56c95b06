"""Faults: DFS errors during flush, compaction and manifest writes, damaged manifests, zombies.

"Acknowledged" data is data included in a completed explicit flush or checkpoint: after any fault
and a reopen, all of it must be there.
"""

import logging
import threading
import uuid
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from statebackend.errors import CompactionError
from statebackend.lsm import db as db_module
from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB
from statebackend.lsm.manifest import FencedError
from tests.lsm.options import small_options


class FaultyFileSystem(AbstractFileSystem):
    """A memory file system that fails chosen calls: `fail(op, path_part, times)`.

    ops: "open" (opening a file for writing), "close" (finishing a write: half the data is stored,
    then the error), "cat" (range reads), "ls", "rm".
    """

    protocol = "faulty"
    root_marker = ""
    _lock = threading.Lock()
    faults: list[list[Any]] = []  # [op, path part, remaining]
    calls: list[tuple[str, str]] = []  # (op, path) of every checked call

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mem = MemoryFileSystem()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.removeprefix("faulty://"))

    @classmethod
    def fail(cls, op: str, path_part: str = "", times: int = 1) -> None:
        with cls._lock:
            cls.faults.append([op, path_part, times])

    @classmethod
    def clear(cls) -> None:
        with cls._lock:
            cls.faults.clear()
            cls.calls.clear()

    def check(self, op: str, path: str) -> None:
        with self._lock:
            self.calls.append((op, path))
            for f in self.faults:
                if f[0] == op and f[1] in path and f[2] > 0:
                    f[2] -= 1
                    raise OSError(f"injected {op} failure on {path}")

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        self.check("ls", path)
        return self.mem.ls(path, detail=detail, **kw)

    def info(self, path: str, **kw: Any) -> Any:
        return self.mem.info(path, **kw)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.mem.makedirs(path, exist_ok=exist_ok)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any):  # noqa: ANN201
        self.check("cat", path)
        return self.mem.cat_file(path, start, end)

    def rm_file(self, path: str) -> None:
        self.check("rm", path)
        self.mem.rm_file(path)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if "w" in mode or "x" in mode:
            self.check("open", path)
            f = self.mem.open(path, mode)
            fs = self
            close = f.close

            def failing_close() -> None:
                try:
                    fs.check("close", path)
                except OSError:
                    data = f.getvalue()
                    f.seek(0)
                    f.truncate()
                    f.write(data[: len(data) // 2])
                    close()
                    raise
                close()

            f.close = failing_close
            return f
        return self.mem.open(path, mode)


fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def _clear_faults():  # noqa: ANN202
    FaultyFileSystem.clear()
    yield
    FaultyFileSystem.clear()


@pytest.fixture(scope="module")
def compactor():  # noqa: ANN201
    c = LocalCompactor(2, processes=False)  # the faulty fs lives in this process
    yield c
    c.close()


@pytest.fixture
def root() -> str:
    return f"faulty://faults-{uuid.uuid4().hex}/db"


def key(i: int) -> bytes:
    return b"k%06d" % i


def write(db: LsmDB, lo: int, hi: int, tag: bytes) -> dict[bytes, bytes]:
    out = {}
    for i in range(lo, hi):
        db.put(key(i), tag + b"%d" % i)
        out[key(i)] = tag + b"%d" % i
    return out


def contents(db: LsmDB) -> dict[bytes, bytes]:
    return dict(db.scan(None, None))


@pytest.mark.parametrize("op", ["open", "close"])
def test_transient_flush_failures_are_retried(
    root: str, compactor: LocalCompactor, op: str
) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    FaultyFileSystem.fail(op, "/tables/", times=2)
    acked = write(db, 0, 300, b"a")
    db.flush()
    db.close()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == acked
    db.close()


def test_persistent_flush_failure_surfaces_and_acknowledged_data_survives(
    root: str, compactor: LocalCompactor
) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(db, 0, 200, b"a")
    db.flush()
    FaultyFileSystem.fail("open", "/tables/", times=100)
    write(db, 200, 220, b"b")
    with pytest.raises(OSError, match="injected open failure"):
        db.flush()
    with pytest.raises(OSError):  # sticky: the writer keeps seeing it
        db.put(b"x", b"y")
    db.close()
    FaultyFileSystem.clear()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == acked
    db.close()


@pytest.mark.parametrize("op", ["open", "close"])
def test_manifest_write_failures_are_retried_under_new_numbers(
    root: str, compactor: LocalCompactor, op: str
) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    first = db.manifest_number
    FaultyFileSystem.fail(op, "/manifest/", times=2)
    acked = write(db, 0, 100, b"a")
    db.checkpoint(1)
    assert db.manifest_number >= first + 3  # two numbers were consumed by the failures
    db.close()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == acked and 1 in db.pins
    db.close()


def test_crash_between_table_write_and_manifest_write(root: str, compactor: LocalCompactor) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(db, 0, 100, b"a")
    db.checkpoint(1)
    write(db, 100, 200, b"b")
    FaultyFileSystem.fail("open", "/manifest/", times=100)
    with pytest.raises(OSError):
        db.checkpoint(2)  # the tables are written, no manifest commits them
    orphans = {p.rsplit("/", 1)[1] for p in db.fs.ls(f"{db._root_path}/tables", detail=False)}
    orphans -= db.version.names()
    assert orphans
    db.close()  # the "crash"
    FaultyFileSystem.clear()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == acked
    db.collect_garbage()
    files = {p.rsplit("/", 1)[1] for p in db.fs.ls(f"{db._root_path}/tables", detail=False)}
    assert not files & orphans
    db.close()


def test_compaction_read_failure_is_retried(root: str, compactor: LocalCompactor) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(db, 0, 600, b"a")
    db.flush()
    FaultyFileSystem.fail("cat", "/tables/", times=1)
    db.compact()  # the failed run is retried: the manual compaction waits for the retry
    assert FaultyFileSystem.faults == [["cat", "/tables/", 0]]  # the failure did happen
    assert db.compactions_installed == 1
    assert not db.version.levels[0] and contents(db) == acked
    db.close()


def test_repeated_compaction_failures_surface_to_the_writer(
    root: str, compactor: LocalCompactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "MAX_COMPACTION_FAILURES", 2)
    # Small memtables: rewriting 50 keys (an overwrite adds no bytes) still fills them.
    db = LsmDB(root, small_options(memtable_bytes=512), compactor=compactor)
    acked = write(db, 0, 50, b"a")
    db.flush()
    # Compaction outputs only: "tables/<epoch>-c<id>-..." (a flush's random suffix may hold "-c").
    FaultyFileSystem.fail("open", f"/tables/{db.epoch:06d}-c", times=1000)
    with pytest.raises(CompactionError, match=f"LSM DB {root}: 2 compactions failed in a row"):
        for i in range(100000):
            db.put(key(i % 50), b"a%d" % (i % 50))
    with pytest.raises(CompactionError):  # sticky
        db.put(b"x", b"y")
    db.close()
    FaultyFileSystem.clear()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == acked
    db.close()


def test_failed_install_commit_leaves_version_and_data_intact(
    root: str, compactor: LocalCompactor
) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(db, 0, 300, b"a")
    db.flush()
    before = db.version.names()
    # every retry of the install commit (4 writes), of every retried compaction
    FaultyFileSystem.fail("open", "/manifest/", times=4 * db_module.MAX_COMPACTION_FAILURES)
    with pytest.raises(CompactionError) as failed:
        db.compact()
    assert isinstance(failed.value.__cause__, OSError)
    assert db.version.names() == before and contents(db) == acked
    db.close()
    FaultyFileSystem.clear()
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    db.compact()
    assert contents(db) == acked and not db.version.levels[0]
    db.close()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_manifest_opens_the_previous_version(
    root: str, compactor: LocalCompactor, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(db, 0, 50, b"a")
    db.flush()
    db.checkpoint(1)
    write(db, 50, 100, b"b")
    db.flush()
    newest = db.manifest_number
    db.close()
    path = f"{db._root_path}/manifest/{newest:012d}.manifest"
    data = db.fs.cat_file(path)
    data = data[:-7] if damage == "truncate" else data[:20] + bytes([data[20] ^ 1]) + data[21:]
    db.fs.mem.pipe_file(path, data)
    with caplog.at_level(logging.WARNING):
        db = LsmDB(root, small_options(), compactor=compactor)
    assert any("falling back" in r.message for r in caplog.records)
    assert contents(db) == acked
    assert db.manifest_number == newest + 1
    db.close()


def test_zombie_writer_is_fenced_and_cannot_change_the_live_version(
    root: str, compactor: LocalCompactor
) -> None:
    zombie = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    acked = write(zombie, 0, 50, b"a")
    zombie.flush()
    fresh = LsmDB(
        root, small_options(auto_compact=False), compactor=compactor
    )  # a restart elsewhere
    write(zombie, 50, 100, b"z")
    with pytest.raises(FencedError, match="newer writer"):
        zombie.flush()
    with pytest.raises(FencedError):
        zombie.put(b"x", b"y")
    with pytest.raises(FencedError):
        zombie.collect_garbage()
    assert contents(fresh) == acked
    write(fresh, 100, 110, b"n")
    fresh.checkpoint(1)
    zombie.close()
    fresh.close()
    db = LsmDB(root, small_options(), compactor=compactor)
    assert contents(db) == {**acked, **{key(i): b"n%d" % i for i in range(100, 110)}}
    db.close()


def test_restore_is_lazy_and_reads_no_table_data(root: str, compactor: LocalCompactor) -> None:
    db = LsmDB(root, small_options(auto_compact=False), compactor=compactor)
    for t in range(40):
        write(db, t * 10, t * 10 + 10, b"t")
        db.flush()
    ref = db.checkpoint(1)
    db.close()
    FaultyFileSystem.clear()
    number = int(ref.path.rsplit("/", 1)[1].split(".")[0])
    db = LsmDB(
        root, small_options(auto_compact=False), compactor=compactor, restore_manifest=number
    )
    assert not [c for c in FaultyFileSystem.calls if c[0] == "cat" and "/tables/" in c[1]]
    assert db.get(key(5)) == b"t5"
    table_reads = {c[1] for c in FaultyFileSystem.calls if c[0] == "cat" and "/tables/" in c[1]}
    assert len(table_reads) == 1  # key ranges and bloom filters: only the table holding the key
    db.close()
