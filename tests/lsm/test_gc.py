"""Garbage collection: grace periods, retained and pinned manifests, protection, zombie fencing,
and the pins that keep tables (reference, savepoint, release, damaged) and retired roots."""

import uuid

import fsspec
import pytest

from statebackend.lsm import files, gc, pins
from statebackend.lsm.gc import GarbageCollector
from statebackend.lsm.manifest import FencedError, ManifestStore, ManifestWriter
from statebackend.lsm.pins import write_pin
from statebackend.lsm.table import TableMeta
from statebackend.lsm.version import Version

LEVELS = 4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Env:
    def __init__(self, retention: int = 2, grace: float = 10.0) -> None:
        self.fs = fsspec.filesystem("memory")
        self.root = f"/gc-{uuid.uuid4().hex}"
        self.store = ManifestStore(self.fs, self.root, LEVELS)
        self.writer = ManifestWriter.open(self.store)
        self.clock = Clock()
        self.gc = GarbageCollector(self.fs, self.root, self.store, grace, retention, self.clock)

    def table(self, name: str) -> TableMeta:
        self.fs.pipe_file(f"{self.root}/tables/{name}", b"x")
        return TableMeta(name, 1, b"a", b"b", 1, 0, None, "test")

    def files(self) -> set[str]:
        return {p.rsplit("/", 1)[1] for p in self.fs.ls(f"{self.root}/tables", detail=False)}

    def commit(self, *names: str, pins: dict[int, int] | None = None, pin: int | None = None):
        version = Version([[self.table(n) for n in names]], LEVELS)
        return self.writer.commit(version, pins or {}, pin_self=pin)

    def collect(self, in_use: set[str] = frozenset(), protected: tuple[str, ...] = ()):  # noqa: B006
        return self.gc.collect(self.writer.epoch, set(in_use), protected)


def test_orphans_are_deleted_only_after_the_grace_period() -> None:
    env = Env()
    env.commit("live.sst")
    env.table("orphan-of-crashed-flush.sst")  # written, manifest never committed
    env.table("000001-cabc-remote-output.sst")  # an abandoned compaction's output
    r = env.collect()
    assert r.deleted_tables == () and r.pending == 2
    env.clock.now += 9.9
    assert env.collect().deleted_tables == ()
    env.clock.now += 0.2
    assert sorted(env.collect().deleted_tables) == [
        "000001-cabc-remote-output.sst",
        "orphan-of-crashed-flush.sst",
    ]
    assert env.files() == {"live.sst"}


def test_in_use_and_protected_prefixes_are_kept_and_restart_the_grace() -> None:
    env = Env(grace=0)
    env.commit()
    env.table("held-by-iterator.sst")
    env.table("000001-cinflight-xyz-1.sst")
    r = env.collect(in_use={"held-by-iterator.sst"}, protected=("000001-cinflight-",))
    assert r.deleted_tables == ()
    assert sorted(env.collect().deleted_tables) == [
        "000001-cinflight-xyz-1.sst",
        "held-by-iterator.sst",
    ]


def test_retained_manifests_protect_their_tables_and_old_ones_are_deleted() -> None:
    env = Env(retention=2, grace=0)
    env.commit("a.sst")
    env.commit("b.sst")
    env.commit("c.sst")
    r = env.collect()
    assert r.deleted_tables == ("a.sst",) and r.deleted_manifests == (1,)
    assert env.files() == {"b.sst", "c.sst"}  # b: the fallback if manifest 3 is damaged
    assert env.store.numbers() == [2, 3]


def test_pinned_manifests_survive_until_released() -> None:
    env = Env(retention=1, grace=0)
    m = env.commit("ckpt.sst", pin=5)
    env.commit("new.sst", pins=dict(m.pins))
    env.commit("newer.sst", pins=dict(m.pins))
    env.collect()
    assert env.files() == {"ckpt.sst", "newer.sst"}
    assert env.store.numbers() == [m.number, m.number + 2]
    env.commit("newest.sst")  # released: the pin is gone
    env.collect()
    assert env.files() == {"newest.sst"}
    assert env.store.numbers() == [m.number + 3]


def test_a_fenced_zombie_does_not_collect() -> None:
    env = Env(grace=0)
    env.commit("old.sst")
    newer = ManifestWriter.open(env.store)
    newer.commit(Version([[env.table("new.sst")]], LEVELS), {})
    env.table("new-inflight.sst")
    with pytest.raises(FencedError):
        env.collect()
    assert env.files() == {"old.sst", "new.sst", "new-inflight.sst"}


def test_tables_named_by_a_newer_epoch_are_never_collected() -> None:
    """A newer writer may have written them and not committed them yet; its own collector
    deletes them if they are garbage."""
    env = Env(grace=0)
    env.commit()
    newer = files.flush_table_name(env.writer.epoch + 1, 1)
    older = files.flush_table_name(env.writer.epoch - 1, 1)
    env.table(newer)
    env.table(older)
    assert env.collect().deleted_tables == (older,)
    assert env.files() == {newer}


# ----------------------------------------------------------------------------------- pins


def pin(env: Env, name: str, payload: dict) -> None:
    write_pin(env.fs, env.root, name, payload)


def test_reference_and_savepoint_pins_keep_tables_and_manifests() -> None:
    env = Env(retention=1, grace=0)
    saved = env.commit("saved.sst")
    env.commit("shared.sst")
    env.commit("live.sst")
    env.table("garbage.sst")
    pin(env, files.reference_pin_name("memory://other", 1), {"root": "memory://other",
                                                              "tables": ["shared.sst"]})
    pin(env, files.savepoint_pin_name("0" * 32), {"manifest": saved.number, "savepoint": "x"})
    r = env.collect()
    assert env.files() == {"saved.sst", "shared.sst", "live.sst"}
    assert r.deleted_tables == ("garbage.sst",)
    assert env.store.numbers() == [saved.number, saved.number + 2]  # the savepoint's kept


def test_a_released_checkpoint_pin_keeps_nothing() -> None:
    env = Env(retention=1, grace=0)
    m = env.commit("ckpt.sst", pin=5)
    env.commit("new.sst", pins=dict(m.pins))
    env.collect()
    assert env.files() == {"ckpt.sst", "new.sst"}
    pin(env, files.released_marker_name(5), {"checkpoint": 5})
    env.collect()
    assert env.files() == {"new.sst"} and env.store.numbers() == [m.number + 1]


def test_a_damaged_pin_stops_deletions_until_it_is_old_enough() -> None:
    env = Env(retention=1, grace=0)
    env.commit("live.sst")
    env.table("garbage.sst")
    name = files.reference_pin_name("memory://other", 1)
    env.fs.pipe_file(files.pin_path(env.root, name), b"half a pin")  # a crash while writing it
    assert env.collect().deleted_tables == () and env.files() == {"live.sst", "garbage.sst"}
    env.clock.now += gc.DAMAGED_PIN_GRACE_S
    assert env.collect().deleted_tables == ()  # the damaged pin goes first ...
    assert not env.fs.exists(files.pin_path(env.root, name))
    assert env.collect().deleted_tables == ("garbage.sst",)  # ... then the garbage


def test_pin_files_verify() -> None:
    payload = {"root": "memory://x", "tables": ["a.sst"]}
    data = pins.encode(payload)
    assert pins.decode(data, "p") == payload
    for damaged in (data[:-1], data[:5], b"x" + data[1:], b""):
        with pytest.raises(pins.DamagedPinError):
            pins.decode(damaged, "p")


def test_a_retired_root_keeps_only_what_its_pins_name() -> None:
    env = Env(retention=1, grace=0)
    ckpt = env.commit("ckpt.sst", pin=1)
    env.commit("latest.sst", pins=dict(ckpt.pins))
    env.table("shared.sst")
    pin(env, files.reference_pin_name("memory://other", 1), {"root": "memory://other",
                                                              "tables": ["shared.sst"]})
    assert env.gc.collect_retired(lambda refs: True) is None  # not retired: its writer collects
    epoch = env.writer.epoch
    pin(env, files.retired_marker_name(epoch), {"epoch": epoch, "checkpoints": [[1, ckpt.number]]})
    r = env.gc.collect_retired(lambda refs: True)
    assert r is not None and not r.emptied and r.deleted_tables == ("latest.sst",)
    assert env.files() == {"ckpt.sst", "shared.sst"}
    assert env.store.numbers() == [ckpt.number]  # only pinned manifests stay
    pin(env, files.released_marker_name(1), {"checkpoint": 1})
    env.fs.rm_file(files.pin_path(env.root, files.reference_pin_name("memory://other", 1)))
    r = env.gc.collect_retired(lambda refs: True)
    assert r is not None and r.emptied and files.list_tables(env.fs, env.root) == []


def test_a_retired_collection_deletes_nothing_while_its_own_pins_elsewhere_cannot_shrink() -> None:
    env = Env(retention=1, grace=0)
    env.commit("latest.sst")
    epoch = env.writer.epoch
    pin(env, files.retired_marker_name(epoch), {"epoch": epoch, "checkpoints": []})
    r = env.gc.collect_retired(lambda refs: False)
    assert r is not None and r.deleted_tables == () and env.files() == {"latest.sst"}
