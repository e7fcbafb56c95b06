"""The compactor tier's capacity model (benchmarks/_tier_model.py): hand-computed cases and the
directions a plan relies on (more writers need more workers, faster workers fewer)."""

import math

import pytest

from benchmarks import _tier_model as model
from statebackend.lsm.options import LsmOptions

C = 1e-8  # seconds per compaction input byte


def two_levels() -> model.LsmShape:
    """L0 and L1 only: every L0 compaction takes 20 tables of 100,000 bytes and rewrites L1,
    which holds every key (10,000,000 bytes)."""
    return model.LsmShape(
        flush_entries=1000,
        table_bytes_per_entry=100,
        user_bytes_per_entry=80,
        keys=100_000,
        level_base_bytes=1 << 20,
        level_multiplier=10,
        l0_compaction_trigger=4,
        l0_stop_trigger=20,
        target_file_size=1 << 20,
        num_levels=2,
    )


def test_two_levels_by_hand() -> None:
    shape = two_levels()
    amp = model.amplification(shape)
    # b = 20 * 1000 * 100 = 2,000,000; D = 100,000 * 100 = 10,000,000; a = (b + D) / b.
    assert amp.batch_bytes == 2_000_000
    assert amp.total == pytest.approx(6.0)
    assert amp.by_output_level == pytest.approx((0.0, 6.0))
    assert amp.levels == pytest.approx((10_000_000,))
    assert amp.distinct_fraction == pytest.approx((1 - math.exp(-0.2)) * 5)
    # tau = phi * a * c = (100 / 80) * 6 * 1e-8 = 7.5e-8 s per user byte.
    assert model.worker_seconds_per_user_byte(shape, C) == pytest.approx(7.5e-8)
    assert model.max_writer_rate(shape, C) == pytest.approx(1 / 7.5e-8)
    assert model.sustained_rate(shape, model.Costs(C), writers=10, workers=2) == pytest.approx(
        2 / 7.5e-8
    )
    # One writer's compactions run one at a time: more workers than writers do not help.
    assert model.sustained_rate(shape, model.Costs(C), writers=1, workers=4) == pytest.approx(
        1 / 7.5e-8
    )
    # 100 writers of 1 MB/s: 100 * 1e6 * 7.5e-8 = 7.5 workers -> 8; exactly 3.0 stays 3.
    assert model.workers_needed(shape, C, writers=100, rate_per_writer=1e6) == 8
    assert model.workers_needed(shape, C, writers=10, rate_per_writer=4e6) == 3
    assert model.workers_needed(shape, C, 10, 4e6, utilization=0.5) == 6
    assert model.workers_needed(shape, C, writers=1, rate_per_writer=1.0) == 1


def test_shared_cores_by_hand() -> None:
    shape = two_levels()  # tau = 7.5e-8
    # Writers of w = 2.5e-8 s/B on 2 shared cores: 2 / (7.5e-8 + 2.5e-8) = 2e7 B/s, below the
    # workers' 2 / 7.5e-8 and the writers' own 1 / 2.5e-8.
    shared = model.Costs(C, writer_cpu_per_user_byte=2.5e-8, shared_cores=2.0, writer_cores=1.0)
    assert model.sustained_rate(shape, shared, writers=10, workers=2) == pytest.approx(2e7)
    # Writers of 1e-7 s/B in one process: at most 1e7 B/s, whatever the workers.
    slow = model.Costs(C, writer_cpu_per_user_byte=1e-7, writer_cores=1.0)
    assert model.sustained_rate(shape, slow, writers=10, workers=2) == pytest.approx(1e7)


def test_a_level_compaction_by_hand() -> None:
    """Three levels; L1's target is 1 byte, so L1 is compacted right after every L0 compaction,
    and target_file_size is so large that one compaction moves all of it into L2 (which holds
    every key, so it never grows). A cycle: L0 -> L1 reads b, then L1 -> L2 reads
    bq + bq * D / (2 bq) + D; a = (b + bq + D / 2 + D) / b."""
    shape = model.LsmShape(
        flush_entries=1000,
        table_bytes_per_entry=100,
        user_bytes_per_entry=100,
        keys=10_000,
        level_base_bytes=1,
        level_multiplier=10,
        l0_compaction_trigger=4,
        l0_stop_trigger=8,
        target_file_size=10**12,
        num_levels=3,
    )
    b, d = 800_000, 1_000_000
    q = (1 - math.exp(-0.8)) * 1.25
    amp = model.amplification(shape)
    assert amp.distinct_fraction == pytest.approx(q)
    assert amp.by_output_level == pytest.approx((0.0, 1.0, (b * q + d / 2 + d) / b))
    assert amp.total == pytest.approx(1 + q + 1.5 * d / b)
    assert amp.levels == pytest.approx((0.0, d))


def test_bigger_l0_batches_amortize_the_rewrite_of_l1() -> None:
    shape = two_levels()
    stops = [model.amplification(_with(shape, l0_stop_trigger=t)).total for t in (4, 8, 20, 40)]
    assert stops == sorted(stops, reverse=True) and stops[0] > stops[-1]


def test_more_writers_need_more_workers_and_faster_workers_fewer() -> None:
    shape = model.LsmShape.of(LsmOptions(max_compactions=1), 9_000_000, 116, 121.5)
    writers = [1, 3, 10, 30, 100, 300, 1000]
    rate = 2 << 20
    needed = [model.workers_needed(shape, C, m, rate) for m in writers]
    assert needed == sorted(needed) and needed[-1] > needed[0]
    faster = [model.workers_needed(shape, C / 2, m, rate) for m in writers]
    assert all(f <= n for f, n in zip(faster, needed, strict=True))
    assert faster[-1] < needed[-1]
    rates = [model.sustained_rate(shape, model.Costs(C), 1000, k) for k in (1, 2, 4, 8)]
    assert rates == sorted(rates) and rates[-1] > rates[0]


def test_options_become_a_shape() -> None:
    options = LsmOptions(memtable_bytes=148_000, l0_stop_trigger=24, max_compactions=1)
    shape = model.LsmShape.of(options, keys=5000, user_bytes_per_entry=116,
                              table_bytes_per_entry=120)  # fmt: skip
    assert shape.flush_entries == pytest.approx(1000)  # 148,000 / (116 + 32)
    assert shape.flush_bytes == pytest.approx(120_000)
    assert shape.state_bytes == pytest.approx(600_000)
    assert shape.table_bytes_per_user_byte == pytest.approx(120 / 116)
    assert shape.l0_stop_trigger == 24
    assert shape.target(3) == options.level_base_bytes * options.level_multiplier**2


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"keys = 0.*num_levels = 1"):
        _with(two_levels(), keys=0, num_levels=1)
    with pytest.raises(ValueError, match="l0 triggers 8, 4"):
        _with(two_levels(), l0_compaction_trigger=8, l0_stop_trigger=4)
    shape = two_levels()
    with pytest.raises(ValueError, match="at most 13,333,333 B/s per writer"):
        model.workers_needed(shape, C, writers=1, rate_per_writer=2e7)
    with pytest.raises(ValueError, match="rate_per_writer > 0"):
        model.workers_needed(shape, C, writers=1, rate_per_writer=0)
    with pytest.raises(ValueError, match=r"writers \(0\)"):
        model.sustained_rate(shape, model.Costs(C), writers=0, workers=1)


def _with(shape: model.LsmShape, **changes: float) -> model.LsmShape:
    fields = {name: getattr(shape, name) for name in shape.__dataclass_fields__}
    return model.LsmShape(**(fields | changes))
