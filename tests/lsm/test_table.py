"""Table files: round trips, lookups, scans, the builder's rules, and corruption detection."""

import io
import random
import struct
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import fsspec
import msgpack
import pytest

from statebackend import ttl
from statebackend.lsm import block
from statebackend.lsm.table import (
    FOOTER_SIZE,
    SCAN_READAHEAD_MAX,
    SCAN_READAHEAD_MIN,
    CorruptTableError,
    FsFileSource,
    TableBuilder,
    TableMeta,
    TableOptions,
    TableReader,
    write_table,
)

SMALL = TableOptions(block_size=256)


class DictCache:
    """A BlockCache without bounds that records what it was asked."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int], object] = {}
        self.charges: dict[tuple[str, int], int] = {}

    def get(self, key: tuple[str, int]) -> object | None:
        return self.entries.get(key)

    def put(self, key: tuple[str, int], value: object, charge: int) -> None:
        self.entries[key] = value
        self.charges[key] = charge


class CountingSource:
    """An in-memory FileSource that counts reads."""

    def __init__(self, data: bytes, size: int | None = None) -> None:
        self.data = data
        self.size = len(data) if size is None else size
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return self.data[offset : offset + length]


def _entries(n: int, seed: int = 0, tombstone_every: int = 5) -> list[tuple[bytes, bytes | None]]:
    rng = random.Random(seed)
    keys = sorted({rng.randbytes(rng.randrange(1, 12)) for _ in range(n)})

    def value(i: int) -> bytes | None:
        payload = rng.randbytes(rng.randrange(60))
        return None if i % tombstone_every == 0 else ttl.wrap(payload, None)

    return [(k, value(i)) for i, k in enumerate(keys)]


def _build(entries: list[tuple[bytes, bytes | None]], options: TableOptions = SMALL) -> bytes:
    sink = io.BytesIO()
    builder = TableBuilder(sink, options, "test", "t.sst")
    for key, value in entries:
        builder.add(key, value)
    meta = builder.finish()
    assert meta.size == len(sink.getvalue())
    return sink.getvalue()


def _reader(data: bytes, cache: DictCache | None = None) -> TableReader:
    return TableReader(CountingSource(data), "t.sst", cache)


@pytest.fixture(params=["memory", "file"])
def fs_root(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[object, str]]:  # noqa: ANN001
    if request.param == "memory":
        fs = fsspec.filesystem("memory")
        root = f"/table-tests-{uuid.uuid4().hex}"
        yield fs, root
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        yield fsspec.filesystem("file"), str(tmp_path)


def test_write_table_round_trip_on_fsspec(fs_root) -> None:  # noqa: ANN001
    fs, root = fs_root
    entries = _entries(3000)
    path = f"{root}/tables/a.sst"
    meta = write_table(fs, path, "a.sst", iter(entries), SMALL, "flush")
    assert meta.size == fs.size(path)
    reader = TableReader(FsFileSource(fs, path), "a.sst")
    assert reader.meta == meta
    assert list(reader.scan()) == entries
    for key, value in entries:
        assert reader.get(key) == (True, value)


def test_meta_and_properties_describe_the_table() -> None:
    entries = [
        (b"a", ttl.wrap(b"x", 5000)),
        (b"b", None),
        (b"c", ttl.wrap(b"y", None)),
        (b"d", ttl.wrap(b"z", 1234)),
        (b"e", None),
    ]
    reader = _reader(_build(entries))
    meta = reader.meta
    assert (meta.name, meta.smallest, meta.largest) == ("t.sst", b"a", b"e")
    assert (meta.entries, meta.tombstones, meta.min_expiry_ms, meta.creator) == (5, 2, 1234, "test")
    assert reader.properties["data_blocks"] == 1
    assert reader.properties["key_bytes"] == 5
    assert reader.properties["value_bytes"] == sum(len(v) for _, v in entries if v)
    assert _reader(_build([(b"a", ttl.wrap(b"x", None))])).meta.min_expiry_ms is None


@pytest.mark.parametrize(
    "options",
    [
        TableOptions(block_size=1),
        TableOptions(block_size=200, compression="none"),
        TableOptions(block_size=4096, bloom_bits_per_key=0),
        TableOptions(compression_level=9),
    ],
)
def test_gets_find_every_key_and_nothing_else(options: TableOptions) -> None:
    entries = _entries(2000, seed=3)
    reader = _reader(_build(entries, options))
    present = dict(entries)
    for key, value in entries:
        assert reader.get(key) == (True, value)
    rng = random.Random(4)
    for _ in range(3000):
        probe = rng.randbytes(rng.randrange(0, 13))
        assert reader.get(probe) == ((True, present[probe]) if probe in present else (False, None))
    assert reader.get(b"") == (False, None) or b"" in present
    assert reader.get(entries[-1][0] + b"\x00") == (False, None)


def test_tombstones_are_found_as_none() -> None:
    reader = _reader(_build([(b"a", b"1"), (b"b", None)]))
    assert reader.get(b"b") == (True, None)
    assert list(reader.scan()) == [(b"a", b"1"), (b"b", None)]


def test_scans_honour_half_open_ranges() -> None:
    entries = _entries(1500, seed=5)
    keys = [k for k, _ in entries]
    reader = _reader(_build(entries))
    rng = random.Random(6)
    bounds = [None, b"", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", *keys[::97]]
    bounds += [rng.randbytes(rng.randrange(1, 12)) for _ in range(30)]
    for start in bounds:
        for end in bounds[::3]:
            expected = [
                e
                for e in entries
                if (start is None or e[0] >= start) and (end is None or e[0] < end)
            ]
            assert list(reader.scan(start, end)) == expected, (start, end)
            batches = list(reader.iter_batches(start, end, readahead=700))
            assert all(ks for ks, _ in batches)
            assert [(k, v) for ks, vs in batches for k, v in zip(ks, vs, strict=True)] == expected
    assert list(reader.scan(keys[10], keys[10])) == []


def test_warm_gets_and_scans_are_served_by_the_cache() -> None:
    entries = _entries(2000, seed=7)
    source = CountingSource(_build(entries))
    cache = DictCache()
    reader = TableReader(source, "t.sst", cache)
    assert list(reader.scan()) == entries
    reads = source.reads
    assert len(cache.entries) == reader.properties["data_blocks"]
    assert all(name == "t.sst" for name, _ in cache.entries)
    assert all(charge > 0 for charge in cache.charges.values())
    for key, value in entries:
        assert reader.get(key) == (True, value)
    assert list(reader.scan(entries[5][0], entries[900][0])) == entries[5:900]
    assert source.reads == reads
    assert list(reader.iter_batches()) and source.reads > reads  # bulk reads bypass the cache


def test_reader_without_cache_reads_each_block_it_needs() -> None:
    entries = _entries(500, seed=8)
    source = CountingSource(_build(entries))
    reader = TableReader(source, "t.sst")
    opened = source.reads
    assert reader.get(entries[100][0]) == (True, entries[100][1])
    assert source.reads == opened + 1


def test_a_long_scan_reads_ahead_and_a_short_one_reads_one_block() -> None:
    entries = _entries(30_000, seed=9)
    data = _build(entries)
    source = CountingSource(data)
    reader = TableReader(source, "t.sst", DictCache())
    blocks = reader.properties["data_blocks"]
    assert blocks > 1000  # 256-byte blocks: a read per block would be over 1000 reads
    opened = source.reads
    assert list(reader.scan(entries[100][0], entries[101][0])) == entries[100:101]
    assert source.reads == opened + 1  # one block: no read-ahead
    opened = source.reads
    assert list(reader.scan()) == entries
    # misses read 1 block, then 16 KiB, 32 KiB, ... up to 1 MiB at a time: not a read per block
    doublings = (SCAN_READAHEAD_MAX // SCAN_READAHEAD_MIN).bit_length()
    assert source.reads - opened <= 2 + doublings + len(data) // SCAN_READAHEAD_MAX
    # every block read ahead was cached: a second scan reads nothing
    opened = source.reads
    assert list(reader.scan()) == entries and source.reads == opened


def test_builder_rejects_keys_out_of_order() -> None:
    builder = TableBuilder(io.BytesIO(), SMALL, "test", "t.sst")
    builder.add(b"b", b"1")
    with pytest.raises(ValueError, match="t.sst"):
        builder.add(b"b", b"2")
    with pytest.raises(ValueError, match="t.sst"):
        builder.add(b"a", b"2")
    with pytest.raises(ValueError, match="not strictly ascending"):
        builder.add_batch([b"c", b"e", b"d"], [b"", b"", b""])
    with pytest.raises(ValueError, match="not strictly ascending"):
        builder.add_batch([b"b", b"c"], [b"", b""])
    with pytest.raises(ValueError, match="2 keys but 1 values"):
        builder.add_batch([b"x", b"y"], [b""])
    builder.add_batch([b"c", b"d"], [b"3", None])
    assert builder.finish().entries == 3


def test_builder_rejects_wrong_types_and_misuse() -> None:
    builder = TableBuilder(io.BytesIO(), SMALL, "test", "t.sst")
    with pytest.raises(TypeError):
        builder.add("a", b"1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        builder.add(b"a", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        builder.add_batch([b"a", b"b"], [b"1", 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no entries"):
        builder.finish()
    done = TableBuilder(io.BytesIO(), SMALL, "test", "t.sst")
    done.add(b"a", b"1")
    done.finish()
    with pytest.raises(ValueError, match="finished"):
        done.add(b"b", b"1")
    with pytest.raises(ValueError, match="finished"):
        done.finish()


def test_add_and_add_batch_build_the_same_entries() -> None:
    entries = _entries(3000, seed=9)
    sink = io.BytesIO()
    builder = TableBuilder(sink, SMALL, "test", "t.sst")
    rng = random.Random(10)
    i = 0
    while i < len(entries):
        n = rng.choice([1, 1, 3, 50, 400])
        chunk = entries[i : i + n]
        if n == 1:
            builder.add(*chunk[0])
        else:
            builder.add_batch([k for k, _ in chunk], [v for _, v in chunk])
        i += n
    meta = builder.finish()
    reader = _reader(sink.getvalue())
    assert list(reader.scan()) == entries
    assert meta == reader.meta
    assert meta.tombstones == sum(v is None for _, v in entries)


def test_add_batch_limit_stops_at_a_block_boundary() -> None:
    entries = _entries(3000, seed=11, tombstone_every=7)
    keys, values = [k for k, _ in entries], [v for _, v in entries]
    tables: list[bytes] = []
    pos = 0
    while pos < len(keys):
        sink = io.BytesIO()
        builder = TableBuilder(sink, SMALL, "test", "t.sst")
        while pos < len(keys):
            added = builder.add_batch(keys[pos : pos + 100], values[pos : pos + 100], limit=4000)
            pos += added
            if added < len(keys[pos - added : pos - added + 100]):
                break
        meta = builder.finish()
        tables.append(sink.getvalue())
        if pos < len(keys):
            assert meta.size >= 4000
            assert meta.size < 4000 + 2 * SMALL.block_size + 2000  # one block + meta blocks
    assert len(tables) > 3
    assert [e for t in tables for e in _reader(t).scan()] == entries


def test_add_batch_limit_keeps_earlier_entries_pending() -> None:
    # 100 tiny pending entries, then big ones: the first block written holds only tiny entries,
    # so the batch is not added at all and the tiny entries stay for this table.
    small = [(b"a%03d" % i, b"x") for i in range(100)]
    big = [(b"b%03d" % i, random.Random(i).randbytes(1000)) for i in range(10)]
    sink = io.BytesIO()
    builder = TableBuilder(sink, SMALL, "test", "t.sst")
    for key, value in small:
        builder.add(key, value)
    assert builder.add_batch([k for k, _ in big], [v for _, v in big], limit=1) == 0
    builder.finish()
    assert list(_reader(sink.getvalue()).scan()) == small
    sink = io.BytesIO()
    builder = TableBuilder(sink, SMALL, "test", "t.sst")
    assert builder.add_batch([k for k, _ in big], [v for _, v in big], limit=1) == 1
    builder.finish()
    assert list(_reader(sink.getvalue()).scan()) == big[:1]


def test_estimated_size_grows_with_entries() -> None:
    builder = TableBuilder(io.BytesIO(), SMALL, "test", "t.sst")
    assert builder.estimated_size() == 0
    builder.add(b"a", b"x" * 100)
    assert builder.estimated_size() == 101
    rng = random.Random(15)
    builder.add_batch([b"b%03d" % i for i in range(100)], [rng.randbytes(100) for _ in range(100)])
    assert builder.estimated_size() >= 100 * 104  # incompressible: written bytes exceed raw bytes


def test_write_table_removes_its_file_on_error(fs_root) -> None:  # noqa: ANN001
    fs, root = fs_root
    path = f"{root}/tables/bad.sst"
    with pytest.raises(ValueError, match="not strictly ascending"):
        write_table(fs, path, "bad.sst", [(b"b", b""), (b"a", b"")], SMALL, "flush")
    assert not fs.exists(path)
    with pytest.raises(ValueError, match="no entries"):
        write_table(fs, path, "bad.sst", [], SMALL, "flush")
    assert not fs.exists(path)


def _regions(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every checksummed region of a table: data blocks, meta blocks, footer."""
    footer = len(data) - FOOTER_SIZE
    index_offset, _, filter_offset, filter_size, props_offset, _ = struct.unpack_from(
        "<6Q", data, footer
    )
    starts = list(_reader(data)._offsets) + [index_offset, props_offset, footer]
    if filter_size:
        starts.append(filter_offset)
    bounds = sorted(starts) + [len(data)]
    return list(zip(bounds, bounds[1:], strict=False))


def _read_everything(data: bytes, keys: list[bytes]) -> None:
    reader = _reader(data)
    list(reader.scan())
    for key in keys:
        reader.get(key)


@pytest.mark.parametrize("options", [SMALL, TableOptions(block_size=300, compression="none")])
def test_every_flipped_byte_is_detected_and_located(options: TableOptions) -> None:
    entries = _entries(120, seed=12)
    keys = [k for k, _ in entries]
    data = _build(entries, options)
    regions = _regions(data)
    assert len(regions) >= 6  # several data blocks, index, filter, properties, footer
    for position in range(len(data)):
        for flip in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= flip
            with pytest.raises(CorruptTableError) as caught:
                _read_everything(bytes(damaged), keys)
            start = next(s for s, e in regions if s <= position < e)
            assert caught.value.offset == start, (position, caught.value)
            assert caught.value.table == "t.sst"
            assert "t.sst" in str(caught.value) and f"offset {start}" in str(caught.value)


@pytest.mark.parametrize("cut", [0, 1, FOOTER_SIZE - 1, FOOTER_SIZE, 100, -1, -FOOTER_SIZE - 3])
def test_truncated_tables_are_rejected(cut: int) -> None:
    data = _build(_entries(300, seed=13))
    truncated = data[:cut]
    with pytest.raises(CorruptTableError, match="t.sst") as caught:
        _reader(truncated)
    assert "truncated" in str(caught.value) or "checksum" in str(caught.value)


def test_a_file_shorter_than_its_recorded_size_is_reported_as_truncated() -> None:
    data = _build(_entries(300, seed=14))
    with pytest.raises(CorruptTableError, match="truncated"):
        TableReader(CountingSource(data[:-10], size=len(data)), "t.sst")


def test_table_meta_round_trips_through_msgpack() -> None:
    meta = TableMeta("x.sst", 10, b"\x00a", b"\xffz", 3, 1, None, "flush")
    assert TableMeta.from_dict(meta.to_dict()) == meta
    packed = msgpack.packb(meta.to_dict(), use_bin_type=True)
    assert TableMeta.from_dict(msgpack.unpackb(packed, raw=False)) == meta
    expiring = TableMeta("y.sst", 10, b"a", b"b", 3, 0, 17, "remote:host")
    assert TableMeta.from_dict(expiring.to_dict()) == expiring


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": "10"}, "'size' must be int"),
        ({"smallest": "a"}, "'smallest' must be bytes"),
        ({"entries": True}, "'entries' must be int"),
        ({"min_expiry_ms": 1.5}, "'min_expiry_ms' must be int or None"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_table_meta_from_dict_names_the_bad_field(change: dict, message: str) -> None:
    data = TableMeta("x.sst", 10, b"a", b"b", 3, 1, None, "flush").to_dict() | change
    with pytest.raises(ValueError, match=message):
        TableMeta.from_dict(data)
    missing = TableMeta("x.sst", 10, b"a", b"b", 3, 1, None, "flush").to_dict()
    del missing["creator"]
    with pytest.raises(ValueError, match="missing field 'creator'"):
        TableMeta.from_dict(missing)


def test_table_options_validate_and_round_trip() -> None:
    options = TableOptions(block_size=100, bloom_bits_per_key=0, compression="none")
    assert TableOptions.from_dict(options.to_dict()) == options
    with pytest.raises(ValueError, match="compression"):
        TableOptions(compression="lz77")
    with pytest.raises(ValueError, match="block_size"):
        TableOptions(block_size=0)
    with pytest.raises(ValueError, match="unknown fields"):
        TableOptions.from_dict(options.to_dict() | {"x": 1})


def test_fs_file_source_detects_a_truncated_file(fs_root) -> None:  # noqa: ANN001
    fs, root = fs_root
    path = f"{root}/tables/t.sst"
    meta = write_table(fs, path, "t.sst", _entries(400, seed=16), SMALL, "flush")
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: len(data) // 2])
    with pytest.raises(CorruptTableError, match="truncated"):
        TableReader(FsFileSource(fs, path, meta.size), "t.sst")
    with pytest.raises(CorruptTableError, match="truncated or not a table"):
        TableReader(FsFileSource(fs, path), "t.sst")


def test_concurrent_readers_share_a_reader_and_cache() -> None:
    entries = _entries(3000, seed=17)
    reader = TableReader(CountingSource(_build(entries)), "t.sst", DictCache())
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                key, value = entries[rng.randrange(len(entries))]
                assert reader.get(key) == (True, value)
            assert list(reader.scan(entries[100][0], entries[200][0])) == entries[100:200]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_iter_batches_with_prefetch_reads_the_same_and_reports_corruption() -> None:
    entries = _entries(3000, seed=18)
    data = _build(entries)
    reader = _reader(data)
    with ThreadPoolExecutor(2) as pool:
        for start, end in [(None, None), (entries[7][0], entries[2500][0]), (None, b"\x80")]:
            expected = list(reader.iter_batches(start, end, readahead=1000))
            assert list(reader.iter_batches(start, end, 1000, pool)) == expected
            assert len(expected) > 5
        damaged = bytearray(data)
        victim = reader._offsets[len(reader._offsets) // 2]
        damaged[victim + 3] ^= 0xFF
        with pytest.raises(CorruptTableError) as caught:
            list(_reader(bytes(damaged)).iter_batches(None, None, 1000, pool))
        assert caught.value.offset == victim


def test_block_encoder_stops_trying_to_compress_incompressible_data() -> None:
    encoder = block.BlockEncoder("zstd", 1)
    rng = random.Random(19)
    compressible = b"abc" * 1000

    def kind(content: bytes) -> int:
        data = encoder.encode(content)
        assert block.decode(data) == content
        return data[-9]

    assert [kind(rng.randbytes(3000)) for _ in range(9)] == [block.NO_COMPRESSION] * 9
    # Attempts now happen every 16th block only: compressible data waits for the next attempt,
    # then compression resumes for every block.
    kinds = [kind(compressible) for _ in range(17)]
    assert kinds == [block.NO_COMPRESSION] * 15 + [block.ZSTD] * 2
    assert kind(rng.randbytes(3000)) == block.NO_COMPRESSION
    assert kind(compressible) == block.ZSTD
