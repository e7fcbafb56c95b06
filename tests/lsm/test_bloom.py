"""The table bloom filter: no false negatives, a bounded false-positive rate, a stable format."""

import random
import struct

import pytest
import xxhash

from statebackend.lsm.bloom import BloomFilter, build_filter, key_hash, probes_for


def _filter(keys: list[bytes], bits_per_key: int = 10) -> BloomFilter:
    return BloomFilter(build_filter(map(key_hash, keys), len(keys), bits_per_key))


def _false_positive_rate(bits_per_key: int, n: int = 20_000) -> float:
    rng = random.Random(bits_per_key)
    keys = [rng.randbytes(16) for _ in range(n)]
    f = _filter(keys, bits_per_key)
    probes = [rng.randbytes(17) for _ in range(n)]  # 17 bytes: never one of the keys
    return sum(map(f.may_contain, probes)) / n


def test_every_added_key_may_be_contained() -> None:
    rng = random.Random(1)
    keys = [rng.randbytes(rng.randrange(0, 40)) for _ in range(30_000)]
    f = _filter(keys)
    assert all(map(f.may_contain, keys))


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_tiny_filters_have_no_false_negatives(n: int) -> None:
    keys = [b"k%d" % i for i in range(n)]
    f = _filter(keys)
    assert all(f.may_contain(k) for k in keys)


def test_false_positive_rate_at_ten_bits_per_key() -> None:
    rate = _false_positive_rate(10)
    assert 0 < rate < 0.02


def test_more_bits_per_key_give_fewer_false_positives() -> None:
    assert _false_positive_rate(20) < _false_positive_rate(10) < _false_positive_rate(4)


def test_probes_follow_bits_per_key() -> None:
    assert probes_for(10) == 7
    assert probes_for(1) == 1
    assert probes_for(1000) == 16
    keys = [b"a", b"b"]
    assert BloomFilter(build_filter(map(key_hash, keys), 2, 10)).num_probes == 7


def test_serialized_format_is_stable() -> None:
    # The filter bytes are part of the on-disk format: a change here breaks existing tables.
    keys = [b"key-%d" % i for i in range(1000)]
    data = build_filter(map(key_hash, keys), len(keys), 10)
    assert data[:6] == struct.pack("<BBI", 1, 7, 40)
    assert len(data) == 6 + 40 * 32
    assert xxhash.xxh3_64_hexdigest(data) == "ea4d6c34078d83eb"
    data4 = build_filter(map(key_hash, keys), len(keys), 4)
    assert xxhash.xxh3_64_hexdigest(data4) == "fe000e70c6175373"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x07", "shorter than its header"),
        (struct.pack("<BBI", 2, 7, 1) + bytes(32), "unknown bloom filter scheme 2"),
        (struct.pack("<BBI", 1, 0, 1) + bytes(32), "0 probes"),
        (struct.pack("<BBI", 1, 7, 0), "0 blocks"),
        (struct.pack("<BBI", 1, 7, 2) + bytes(32), "expected 70"),
    ],
)
def test_malformed_filters_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BloomFilter(data)


def test_an_empty_filter_contains_nothing() -> None:
    f = BloomFilter(struct.pack("<BBI", 1, 7, 3) + bytes(96))
    assert not any(f.may_contain(b"k%d" % i) for i in range(1000))
