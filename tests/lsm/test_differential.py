"""A randomized differential test: LsmDB against a plain dict, on memory:// and file://.

Thousands of random put/delete/get/scan/flush/compact/checkpoint/release/restore/reopen/crash
steps; tiny memtables and level sizes make flushes, compactions, trivial moves and garbage
collection (grace 0, frequent) happen all the time in the background.
"""

import random
import uuid
from typing import Any

import pytest

from statebackend.lsm.compactor import LocalCompactor
from statebackend.lsm.db import LsmDB, LsmOptions
from statebackend.lsm.table import TableOptions
from statebackend.ttl import wrap

STEPS = 5000
KEYS = 400

OPTIONS = LsmOptions(
    memtable_bytes=2048,
    table=TableOptions(block_size=256),
    target_file_size=2048,
    level_base_bytes=8192,
    level_multiplier=4,
    l0_compaction_trigger=2,
    gc_grace_s=0,
    gc_interval_s=0.02,
    manifest_retention=2,
    block_cache_bytes=64 << 10,
    retry_backoff_s=0.001,
)


def number_of(path: str) -> int:
    return int(path.rsplit("/", 1)[1].split(".")[0])


class Run:
    def __init__(self, root: str, seed: int, compactor: LocalCompactor | None) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.compactor = compactor
        self.db = LsmDB(root, OPTIONS, compactor=compactor)
        self.model: dict[bytes, bytes] = {}
        self.checkpoints: dict[int, tuple[int, dict[bytes, bytes]]] = {}  # id -> (manifest, model)
        self.next_checkpoint = 1

    def key(self) -> bytes:
        return b"key-%05d" % self.rng.randrange(KEYS)

    def bounds(self) -> tuple[bytes | None, bytes | None]:
        a, b = sorted([self.key(), self.key()])
        return (None if self.rng.random() < 0.1 else a), (None if self.rng.random() < 0.1 else b)

    def expected(self, lo: bytes | None, hi: bytes | None, model: dict[bytes, bytes]) -> list:
        return sorted(
            (k, v) for k, v in model.items() if (lo is None or k >= lo) and (hi is None or k < hi)
        )

    def reopen(self, restore: int | None = None) -> None:
        self.db = LsmDB(self.root, OPTIONS, compactor=self.compactor, restore_manifest=restore)

    def step(self) -> None:
        r = self.rng.random()
        db = self.db
        if r < 0.45:
            k = self.key()
            # values are TTL envelopes (see statebackend.ttl); these never expire
            v = wrap(self.rng.randbytes(self.rng.randrange(60)), None)
            db.put(k, v)
            self.model[k] = v
        elif r < 0.55:
            k = self.key()
            db.delete(k)
            self.model.pop(k, None)
        elif r < 0.75:
            k = self.key()
            assert db.get(k) == self.model.get(k)
        elif r < 0.82:
            lo, hi = self.bounds()
            assert list(db.scan(lo, hi)) == self.expected(lo, hi, self.model)
        elif r < 0.86:  # a scan stays point-in-time while writes continue
            lo, hi = self.bounds()
            want = self.expected(lo, hi, self.model)
            it = db.scan(lo, hi)
            for _ in range(self.rng.randrange(50)):
                k = self.key()
                db.put(k, wrap(b"later", None))
                self.model[k] = wrap(b"later", None)
            assert list(it) == want
        elif r < 0.89:
            db.flush()
        elif r < 0.90:
            db.compact()
        elif r < 0.93:
            cid = self.next_checkpoint
            self.next_checkpoint += 1
            self.checkpoints[cid] = (number_of(db.checkpoint(cid).path), dict(self.model))
        elif r < 0.95 and self.checkpoints:
            cid = self.rng.choice(sorted(self.checkpoints))
            db.release_checkpoint(cid)
            del self.checkpoints[cid]
        elif r < 0.97 and self.checkpoints:  # crash, then restore a retained checkpoint
            cid = self.rng.choice(sorted(self.checkpoints))
            number, model = self.checkpoints[cid]
            db.close()
            self.reopen(number)
            self.model = dict(model)
        elif r < 0.98:  # clean restart
            db.flush()
            db.close()
            self.reopen()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        self.db.flush()
        self.db.wait_idle()
        assert list(self.db.scan(None, None)) == sorted(self.model.items())
        self.db.close()


@pytest.fixture(scope="module")
def thread_compactor():  # noqa: ANN201
    c = LocalCompactor(2, processes=False)
    yield c
    c.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_differential_memory(seed: int, thread_compactor: Any) -> None:
    Run(f"memory://diff-{uuid.uuid4().hex}/db", seed, thread_compactor).run(STEPS)


def test_differential_file(tmp_path: Any) -> None:
    compactor = LocalCompactor(2, processes=True)
    try:
        Run(f"file://{tmp_path}/db", 3, compactor).run(STEPS)
    finally:
        compactor.close()
