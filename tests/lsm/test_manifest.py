"""Versions, manifest files, epoch fencing, fallback past damaged manifests."""

import logging
import uuid

import fsspec
import pytest

from statebackend.lsm.manifest import (
    CorruptManifestError,
    FencedError,
    Manifest,
    ManifestStore,
    ManifestWriter,
    decode,
    encode,
)
from statebackend.lsm.table import TableMeta
from statebackend.lsm.version import Version, VersionEdit

LEVELS = 4


def meta(name: str, lo: bytes, hi: bytes, size: int = 100) -> TableMeta:
    return TableMeta(name, size, lo, hi, 10, 1, None, "test")


@pytest.fixture
def store() -> ManifestStore:
    fs = fsspec.filesystem("memory")
    return ManifestStore(fs, f"/manifest-test-{uuid.uuid4().hex}", LEVELS)


def test_version_apply_orders_levels_and_checks_invariants() -> None:
    v = Version.empty(LEVELS)
    v = v.apply(VersionEdit(added=((0, meta("a", b"a", b"z")),)))
    v = v.apply(VersionEdit(added=((0, meta("b", b"a", b"m")),)))
    assert [t.name for t in v.levels[0]] == ["b", "a"]  # newest first
    v = v.apply(VersionEdit(added=((1, meta("y", b"n", b"p")), (1, meta("x", b"a", b"c")))))
    assert [t.name for t in v.levels[1]] == ["x", "y"]
    assert [[t.name for t in run] for run, _ in v.runs] == [["x", "y"]]
    assert v.runs[0][1] == [b"c\x00", b"p\x00"]  # effective ends, for bisecting
    assert [t.name for t in v.overlapping(1, b"c", b"n\x00")] == ["x", "y"]  # [c, n] = [c, n\0)
    assert [t.name for t in v.overlapping(1, b"c\x00", b"n")] == []
    with pytest.raises(ValueError, match="overlap"):
        v.apply(VersionEdit(added=((1, meta("w", b"b", b"o")),)))
    with pytest.raises(ValueError, match="not in the version"):
        v.apply(VersionEdit(removed=((2, meta("x", b"a", b"c")),)))
    a, x = v.levels[0][1], v.levels[1][0]
    v2 = v.apply(VersionEdit(removed=((0, a), (1, x)), added=((2, meta("x2", b"a", b"c")),)))
    assert v2.names() == {"b", "y", "x2"} and v.names() == {"a", "b", "x", "y"}


def test_encode_decode_roundtrip() -> None:
    v = Version([[meta("t0", b"\x00", b"\xff")], [meta("t1", b"a", b"b")]], LEVELS)
    m = Manifest(7, 3, "w", v, {5: 7, 4: 6}, 123)
    back = decode(encode(m), "x", LEVELS)
    assert (back.number, back.epoch, back.writer, back.pins, back.created_ms) == (
        7,
        3,
        "w",
        m.pins,
        123,
    )
    assert back.version.levels == v.levels


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_newest_manifest_falls_back_with_a_warning(
    store: ManifestStore, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    w = ManifestWriter.open(store)
    good = w.commit(Version([[meta("a", b"a", b"b")]], LEVELS), {})
    bad = w.commit(Version([[meta("b", b"a", b"b")]], LEVELS), {})
    path = store.path(bad.number)
    data = store.fs.cat_file(path)
    data = {
        "truncate": data[: len(data) // 2],
        "flip": data[:5] + bytes([data[5] ^ 0x40]) + data[6:],
        "empty": b"",
    }[damage]
    store.fs.pipe_file(path, data)
    with caplog.at_level(logging.WARNING, logger="statebackend.lsm.manifest"):
        latest = store.latest()
    assert latest is not None and latest.number == good.number
    assert latest.version.names() == {"a"}
    assert any("falling back" in r.message for r in caplog.records)
    # the next writer does not reuse the damaged number
    w2 = ManifestWriter.open(store)
    assert w2.commit(latest.version, {}).number == bad.number + 1
    assert w2.epoch == w.epoch + 1


def test_no_readable_manifest_is_an_error_not_an_empty_db(store: ManifestStore) -> None:
    assert store.latest() is None
    w = ManifestWriter.open(store)
    m = w.commit(Version.empty(LEVELS), {})
    store.fs.pipe_file(store.path(m.number), b"garbage")
    with pytest.raises(CorruptManifestError, match="no readable manifest"):
        store.latest()


def test_newer_epoch_fences_the_zombie(store: ManifestStore) -> None:
    old = ManifestWriter.open(store)
    old.commit(Version.empty(LEVELS), {})
    old.commit(Version([[meta("old1", b"a", b"b")]], LEVELS), {})
    new = ManifestWriter.open(store)
    assert new.epoch > old.epoch
    live = new.commit(Version([[meta("new", b"a", b"b")]], LEVELS), {})
    with pytest.raises(FencedError, match="newer writer"):
        old.commit(Version([[meta("zombie", b"a", b"b")]], LEVELS), {})
    with pytest.raises(FencedError):  # stays fenced
        old.commit(Version.empty(LEVELS), {})
    latest = store.latest()
    assert latest is not None and latest.number == live.number and latest.version.names() == {"new"}


def test_new_writer_skips_a_number_taken_by_an_older_epoch(store: ManifestStore) -> None:
    old = ManifestWriter.open(store)
    old.commit(Version.empty(LEVELS), {})
    new = ManifestWriter.open(store)  # has listed the manifests, not yet committed
    zombie = old.commit(Version([[meta("zombie", b"a", b"b")]], LEVELS), {})
    m = new.commit(Version([[meta("new", b"a", b"b")]], LEVELS), {})
    assert m.number == zombie.number + 1
    with pytest.raises(FencedError):
        old.commit(Version.empty(LEVELS), {})
    assert store.latest().version.names() == {"new"}


def test_two_writers_of_the_same_epoch_cannot_both_commit(store: ManifestStore) -> None:
    a = ManifestWriter.open(store)
    b = ManifestWriter.open(store)
    assert a.epoch == b.epoch
    a.commit(Version.empty(LEVELS), {})
    with pytest.raises(FencedError):
        b.commit(Version.empty(LEVELS), {})


def test_pin_self_and_pins_survive(store: ManifestStore) -> None:
    w = ManifestWriter.open(store)
    m = w.commit(Version.empty(LEVELS), {1: 0}, pin_self=9)
    assert m.pins == {1: 0, 9: m.number}
    assert store.read(m.number).pins == {1: 0, 9: m.number}


class _FailingOnce:
    def __init__(self, store: ManifestStore) -> None:
        self.store = store
        self.failed = False

    def create(self, m: Manifest) -> None:
        if not self.failed:
            self.failed = True
            with self.store.fs.open(self.store.path(m.number), "xb") as f:
                f.write(encode(m)[:10])  # a partial file, then the error
            raise OSError("injected")
        self.store.create(m)

    def __getattr__(self, name: str):  # noqa: ANN204 - delegate everything else
        return getattr(self.store, name)


def test_failed_write_consumes_its_number(store: ManifestStore) -> None:
    w = ManifestWriter.open(store)
    w.store = _FailingOnce(store)  # type: ignore[assignment]
    with pytest.raises(OSError, match="injected"):
        w.commit(Version.empty(LEVELS), {})
    m = w.commit(Version([[meta("a", b"a", b"b")]], LEVELS), {})
    assert m.number == 2
    assert store.latest().number == 2
