"""Round trips of opening a DB and of its first read: a restore at the same parallelism, a rescale
and a fresh open, on a file system that counts its requests the way an object store serves them.

On an object store every request is a round trip (several milliseconds), and restore time is
the number of round trips on its critical path. `CountingFileSystem` (a memory file system)
counts each call that is one request on s3fs, and a logical clock per thread tells the round
trips on the critical path: a request advances its thread's clock by one; the calls that
`files.each` runs concurrently start at their caller's time, which moves on to the latest of
theirs; a read of several files in one call (`cat_ranges`, concurrent on an async file system) is
one round trip. The bounds below are the counts measured when opening was made concurrent: a
change that adds a round trip fails here.
"""

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.spec import AbstractFileSystem

from statebackend.keygroups import KeyGroupRange
from statebackend.lsm import files
from statebackend.lsm.backend import LsmStore, LsmStoreFactory
from statebackend.lsm.compactor import LocalCompactor
from statebackend.store import StoreHandle
from tests.lsm.stores import Operator, key, ranges

# A restore of a subtask's own checkpoint (the root taken over), and its first get:
RESTORE_ROUNDS = 6
#   1. list the root's manifest, pin and table folders (concurrently)
#   2. read its pin files, its newest manifests and the restored manifest (one read)
#   3. commit the first manifest (the new epoch)
#   4. delete the retirement marker its disposed writer left (obsolete after the commit)
#   5. get: open every table the key may be in (concurrently: one read of each table's tail)
#   6. get: read the data block
# A 2 -> 3 rescale (a new root adopting two sources), and its first get:
RESCALE_ROUNDS = 10
#   1. read and verify the two sources' manifests (concurrently)
#   2. list the two sources' tables (they must exist)
#   3. holds records in the new root, 4. then reference pins in the sources' roots
#   5. commit the first manifest
#   6. retire the old roots: list their manifests, 7. read the newest, 8. write the marker
#   9. get: open the tables (one read of each tail), 10. read the data block
# A fresh open of a root nobody used:
FRESH_ROUNDS = 2
#   1. list the manifest and pin folders (concurrently), 2. commit the first manifest


class Recorder:
    """The requests of the threads it follows and their logical clocks."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def now(self) -> int | None:
        """This thread's logical time; None for a thread not followed."""
        return getattr(self._local, "now", None)

    @now.setter
    def now(self, value: int | None) -> None:
        self._local.now = value

    def request(self, op: str, paths: list[str], rounds: int = 1) -> None:
        """`rounds` round trips of this thread, with a request for each of `paths` in each."""
        if self.now is None:
            return  # e.g. a DB's background thread
        self.now += rounds
        with self._lock:
            self.requests.extend((op, path) for path in paths for _ in range(rounds))

    def each(self, real: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        """`files.each` whose concurrent calls start at the caller's time; the caller's time
        moves on to the latest of theirs."""

        def each(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
            start = self.now
            if start is None:
                return real(function, items)
            ends: list[int] = []

            def timed(item: Any) -> Any:
                self.now = start
                try:
                    return function(item)
                finally:
                    ends.append(self.now)
                    self.now = None

            try:
                return real(timed, items)
            finally:
                self.now = max(ends, default=start)

        return each

    def rounds_of(self, action: Callable[[], Any]) -> tuple[int, Counter[str], Any]:
        """Run `action` on this thread: its round trips, requests by kind, and its result."""
        self.requests.clear()
        self.now = 0
        try:
            result = action()
            return self.now, Counter(op for op, _ in self.requests), result
        finally:
            self.now = None


RECORDER = Recorder()


class CountingFileSystem(AbstractFileSystem):
    """A memory file system that reports each call that is one request on s3fs."""

    protocol = "counting"
    root_marker = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mem = MemoryFileSystem()

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return MemoryFileSystem._strip_protocol(path.removeprefix("counting://"))

    def ls(self, path: str, detail: bool = True, **kw: Any) -> Any:
        RECORDER.request("list", [path])
        return self.mem.ls(path, detail=detail, **kw)

    def info(self, path: str, **kw: Any) -> Any:
        RECORDER.request("info", [path])
        return self.mem.info(path, **kw)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        RECORDER.request("makedirs", [path])  # s3fs: a HEAD of the bucket
        self.mem.makedirs(path, exist_ok=exist_ok)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any):  # noqa: ANN201
        # s3fs asks for the size before it reads a whole file given no start.
        RECORDER.request("read", [path], rounds=2 if start is None and end is None else 1)
        return self.mem.cat_file(path, start, end)

    def cat_ranges(self, paths: list[str], starts: Any, ends: Any, **kw: Any) -> list[Any]:
        RECORDER.request("read", paths)  # s3fs reads them concurrently: one round trip
        return self.mem.cat_ranges(paths, starts, ends, **kw)

    def rm_file(self, path: str) -> None:
        RECORDER.request("delete", [path])
        self.mem.rm_file(path)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        RECORDER.request("write" if "w" in mode or "x" in mode else "open", [path])
        return self.mem.open(path, mode)


fsspec.register_implementation("counting", CountingFileSystem, clobber=True)


@pytest.fixture(autouse=True)
def _follow_concurrent_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(files, "each", RECORDER.each(files.each))
    yield


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[Operator]:
    op = Operator(tmp_path, f"counting://rt-{uuid.uuid4().hex}/checkpoints")
    compactor = LocalCompactor(1, processes=False)  # the counting fs lives in this process
    op.factory = LsmStoreFactory(compactor)
    yield op
    compactor.close()


def checkpointed(op: Operator) -> list[tuple[StoreHandle, KeyGroupRange]]:
    """Two subtasks write, checkpoint and are disposed, as before a restore; their handles and
    key groups. Each writes the odd keys of its key groups, then the even ones: the odd keys
    are in the older tables, whose ranges the newer tables overlap."""
    sources = []
    for index, key_groups in enumerate(ranges(2)):
        store = op.open(2, index)
        for parity in (1, 0):
            for group in key_groups:
                for i in range(parity, 24, 2):
                    store.put(key(group, i), b"v-%d-%d" % (group, i))
        sources.append((store.snapshot(1), key_groups))
        store.dispose()
    return sources


def first_read(store: LsmStore, key_groups: KeyGroupRange) -> None:
    """Read an odd key: a lookup that opens several tables (asserted)."""
    group = key_groups.start + 1
    k = key(group, 3)
    version = store.db.version
    assert sum(t.lo <= k < t.hi for t in version.levels[0]) > 1
    assert store.get(k) == b"v-%d-3" % group


def test_a_restore_and_its_first_read_take_six_round_trips(operator: Operator) -> None:
    (handle, key_groups), _ = checkpointed(operator)

    def restore() -> LsmStore:
        store = operator.open(2, 0, restore=handle)
        first_read(store, key_groups)
        return store

    rounds, requests, store = RECORDER.rounds_of(restore)
    store.dispose()
    assert rounds <= RESTORE_ROUNDS, requests
    assert requests["makedirs"] == 0 and requests["info"] == 0, requests


def test_a_rescale_and_its_first_read_take_ten_round_trips(operator: Operator) -> None:
    sources = checkpointed(operator)

    def rescale() -> LsmStore:
        store = operator.rescaled(3, 1, sources)
        first_read(store, ranges(3)[1])
        return store

    rounds, requests, store = RECORDER.rounds_of(rescale)
    store.dispose()
    assert rounds <= RESCALE_ROUNDS, requests
    assert requests["makedirs"] == 0 and requests["info"] == 0, requests


def test_a_fresh_open_takes_two_round_trips(operator: Operator) -> None:
    rounds, requests, store = RECORDER.rounds_of(lambda: operator.open(1, 0))
    store.dispose()
    assert rounds <= FRESH_ROUNDS, requests
    assert requests == Counter(list=2, write=1)
