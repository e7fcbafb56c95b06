"""Merging sorted runs: newest run wins on equal keys, tombstones are kept, order is ascending."""

import random
from collections.abc import Iterator
from itertools import islice

import pytest

from statebackend.lsm.merge import batches_of, merge_batches, merge_runs

Run = list[tuple[bytes, bytes | None]]


def _reference(runs: list[Run]) -> Run:
    merged: dict[bytes, bytes | None] = {}
    for run in reversed(runs):  # oldest first
        merged.update(run)
    return sorted(merged.items())


def _random_runs(rng: random.Random, count: int, universe: int) -> list[Run]:
    runs = []
    for r in range(count):
        size = rng.choice([0, 1, 5, rng.randrange(universe)])
        keys = sorted(rng.sample(range(universe), min(size, universe)))
        runs.append(
            [(b"%06d" % k, None if rng.random() < 0.2 else b"run%d-%d" % (r, k)) for k in keys]
        )
    return runs


def test_newest_run_wins_and_tombstones_are_kept() -> None:
    newest = [(b"a", b"new"), (b"c", None)]
    middle = [(b"a", b"mid"), (b"b", b"mid"), (b"c", b"mid")]
    oldest = [(b"b", None), (b"d", b"old")]
    assert list(merge_runs([iter(newest), iter(middle), iter(oldest)])) == [
        (b"a", b"new"),
        (b"b", b"mid"),
        (b"c", None),
        (b"d", b"old"),
    ]


@pytest.mark.parametrize("seed", range(30))
def test_merge_runs_matches_a_reference_merge(seed: int) -> None:
    rng = random.Random(seed)
    runs = _random_runs(rng, rng.randrange(1, 7), rng.choice([10, 300, 5000]))
    assert list(merge_runs([iter(r) for r in runs])) == _reference(runs)


@pytest.mark.parametrize("seed", range(30))
def test_merge_batches_with_uneven_and_empty_batches(seed: int) -> None:
    rng = random.Random(1000 + seed)
    runs = _random_runs(rng, rng.randrange(1, 6), 2000)

    def batches(run: Run):  # noqa: ANN202
        i = 0
        while i < len(run):
            n = rng.choice([0, 1, 2, 17, 300])
            chunk = run[i : i + n]
            yield [k for k, _ in chunk], [v for _, v in chunk]
            i += n

    out = list(merge_batches([batches(r) for r in runs]))
    assert all(keys for keys, _ in out)
    flat = [(k, v) for keys, values in out for k, v in zip(keys, values, strict=True)]
    assert flat == _reference(runs)


def test_inputs_are_not_mutated() -> None:
    a_keys, a_values = [b"a", b"c", b"e"], [b"1", b"2", b"3"]
    b_keys, b_values = [b"b", b"c", b"d"], [b"x", None, b"z"]
    list(merge_batches([iter([(a_keys, a_values)]), iter([(b_keys, b_values)])]))
    assert (a_keys, a_values, b_keys, b_values) == (
        [b"a", b"c", b"e"],
        [b"1", b"2", b"3"],
        [b"b", b"c", b"d"],
        [b"x", None, b"z"],
    )


def test_no_runs_and_empty_runs() -> None:
    assert list(merge_runs([])) == []
    assert list(merge_runs([iter([]), iter([])])) == []
    assert list(merge_runs([iter([(b"a", None)])])) == [(b"a", None)]
    assert list(merge_runs([iter([]), iter([(b"a", b"1")])])) == [(b"a", b"1")]


def test_disjoint_runs_pass_batches_through_whole() -> None:
    low = ([b"a", b"b"], [b"1", b"2"])
    high = ([b"x", b"y"], [b"3", b"4"])
    out = list(merge_batches([iter([high]), iter([low])]))
    assert out == [low, high]
    assert out[0][0] is low[0]  # no copy when one run alone covers a step


def test_batches_of_chunks_entries_in_growing_batches() -> None:
    entries = [(b"%03d" % i, b"v") for i in range(40)]
    chunks = list(batches_of(iter(entries), 4, 10))
    assert [len(keys) for keys, _ in chunks] == [4, 8, 10, 10, 8]
    assert [e for keys, values in chunks for e in zip(keys, values, strict=True)] == entries


def test_merge_runs_reads_little_ahead_of_what_it_yields() -> None:
    consumed = [0, 0]

    def run(index: int) -> Iterator[tuple[bytes, bytes | None]]:
        for i in range(100_000):
            consumed[index] += 1
            yield b"%06d" % (2 * i + index), b"v"

    merged = merge_runs([run(0), run(1)])
    assert [k for k, _ in islice(merged, 10)] == [b"%06d" % i for i in range(10)]
    assert max(consumed) <= 64


@pytest.mark.parametrize("few_is_newer", [True, False])
def test_a_few_entries_merge_into_many_with_precedence(few_is_newer: bool) -> None:
    many = [(b"%04d" % i, b"many") for i in range(0, 400, 2)]
    few = [(k, b"few") for k in (b"0000", b"0001", b"0200", b"0399", b"9")]
    runs = [few, many] if few_is_newer else [many, few]
    batches = [iter([([k for k, _ in r], [v for _, v in r])]) for r in runs]
    merged = list(merge_batches(batches))
    out = [(k, v) for keys, values in merged for k, v in zip(keys, values, strict=True)]
    assert out == _reference(runs)
    assert dict(out)[b"0000"] == (b"few" if few_is_newer else b"many")
