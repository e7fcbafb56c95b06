"""The capacity model of the compactor tier: how fast M writer databases can write without a stop
stall when K compaction workers run their compactions, and how many workers M writers need.

Pure arithmetic, no I/O: `benchmarks/compactor_tier.py` measures the costs on this machine, feeds
them in and checks the predictions against real runs. (The leading underscore keeps this module
out of `python -m benchmarks`' list of benchmarks.)

Notation (one writer database; sizes in table bytes unless they say otherwise):

- `e_u` user bytes per entry (key + value), `e_t` table bytes per entry (measured: blocks, index
  and filter included), `phi = e_t / e_u`;
- `S` = `memtable_bytes`; the memtable counts `e_u + 32` bytes per entry (`ENTRY_OVERHEAD`) and is
  flushed as one L0 table of `x = S / (e_u + 32)` entries, `s = x * e_t` bytes;
- `N` keys, updated uniformly at random; `D = N * e_t` the live data (every key once);
- `B` = `level_base_bytes`, `F` = `level_multiplier` (the fan-out), `target(k) = B * F^(k-1)`,
  `T0` = `l0_compaction_trigger`, `Tstop` = `l0_stop_trigger`, `tf` = `target_file_size`;
- `c` seconds a worker spends per compaction input byte (measured), `K` workers, `M` writers.

**The stop boundary.** A writer stops when L0 holds `Tstop` tables. The faster the writers, the
longer L0 waits for its compaction and the more tables one L0 compaction takes, which amortizes
its rewrite of L1 over more flushed bytes: compaction work per byte written falls as the L0 batch
grows, down to the batch the stop trigger allows. So the highest rate without a stop is the one
at which every L0 compaction takes `Tstop` tables, `b = Tstop * s` bytes: a higher rate needs more
work than the workers give even at the cheapest batches; at a lower rate batches are smaller and
cost more per byte, but the workers keep up. Writers that write as fast as they can are held at
that rate by their stops, which is how the benchmark measures it.

**Write amplification `a`** (compaction input bytes per flushed byte) at that boundary, from the
picker's rules (`statebackend/lsm/picker.py`), by simulating one database's level sizes. A
database runs one compaction at a time (`max_compactions = 1`: with uniform keys an L0 compaction
takes every L1 table, so it conflicts with anything else at L1). Start: every key once in the
level a full compaction fills (the first k >= 1 with `D <= target(k)`, at most the last). Then,
again and again, the level with the highest score is compacted: L0's score is `Tstop / T0`
(L0 is full whenever it may be picked), level k's (1 .. `num_levels` - 2) is `L_k / target(k)`;
ties go to the deeper level. Keys are uniform, so a level of `L` bytes holds a fraction `L / D`
of the keys, and the `Tstop * x` entries of a batch a fraction
`q = (1 - exp(-Tstop * x / N)) * N / (Tstop * x)` of distinct ones.

- L0 -> L1 reads `b + L_1`; then `L_1 += b * q * (1 - L_1 / D)` (the batch's keys L1 lacks).
- Lk -> Lk+1 reads one table of level k, `t = min(tf, L_k)`, and the tables of level k+1 its key
  range overlaps: `t * L_(k+1) / (2 * L_k)` plus one table cut by the ends of the range,
  `min(tf, L_(k+1))`. The half: round robin picks the key range that has gone longest without
  a compaction, which holds about twice the level's average bytes per key range (a level fills
  evenly and is emptied by a sweep: its density at the cursor is the peak of a sawtooth).
  Then `L_k -= t` and `L_(k+1) += t * (1 - L_(k+1) / D)`. With `L_(k+1) = 0` it is a trivial
  move: nothing read.

`a` = input bytes / flushed bytes, counted over the last `measured` of `passes` flushes of `D`
(the levels settle within a pass or two; the steps grow with `passes * D / b`).

Left out: level k+1 is not even either. Its own sweep leaves it thin just behind its cursor, and
empty where it has just taken everything down, so a table that lands there overlaps less or moves
trivially (a third of L1's tables in the validation's databases). So the model counts somewhat
more work than a database does: it errs on the side of more workers.

**Rates.** A worker spends `tau = phi * a * c` seconds per user byte written. A database's
compactions run one at a time, so at most `min(K, M)` workers serve M writers, and the sustained
write rate of the tier (user bytes/s) is

    R = min(K, M) / tau

When the writers and the workers share `P` cores (the validation on this machine), the writers'
own CPU, `w` seconds per user byte, comes out of the same cores:

    R = min( min(K, M) / tau,  P / (tau + w),  P_w / w )

with `P_w` the cores the writers can use (1 for writers in one Python process). The workers M
writers of `W` user bytes/s each need (on cores of their own) are

    K = ceil(M * W * tau / u)

at a target utilization `u` <= 1 (1: the fewest without stalls); one writer can write at most
`1 / tau` (its compactions are serial), and no K serves a faster one.
"""

import functools
import math
from dataclasses import dataclass

from statebackend.lsm.memtable import ENTRY_OVERHEAD
from statebackend.lsm.options import LsmOptions


@dataclass(frozen=True)
class LsmShape:
    """One writer database as the model sees it (see the module docstring for the letters)."""

    flush_entries: float  # x
    table_bytes_per_entry: float  # e_t
    user_bytes_per_entry: float  # e_u
    keys: float  # N
    level_base_bytes: float  # B
    level_multiplier: float  # F
    l0_compaction_trigger: int  # T0
    l0_stop_trigger: int  # Tstop
    target_file_size: float  # tf
    num_levels: int

    def __post_init__(self) -> None:
        positive = ("flush_entries", "table_bytes_per_entry", "user_bytes_per_entry", "keys",
                    "level_base_bytes", "target_file_size")  # fmt: skip
        bad = [f"{name} = {getattr(self, name)!r}" for name in positive if getattr(self, name) <= 0]
        if self.level_multiplier < 1:
            bad.append(f"level_multiplier = {self.level_multiplier!r} (must be >= 1)")
        if not 1 <= self.l0_compaction_trigger <= self.l0_stop_trigger:
            bad.append(
                f"l0 triggers {self.l0_compaction_trigger!r}, {self.l0_stop_trigger!r} "
                "(must be >= 1 and ordered)"
            )
        if self.num_levels < 2:
            bad.append(f"num_levels = {self.num_levels!r} (must be >= 2)")
        if bad:
            raise ValueError("invalid LSM shape: " + "; ".join(bad))

    @classmethod
    def of(
        cls,
        options: LsmOptions,
        keys: float,
        user_bytes_per_entry: float,
        table_bytes_per_entry: float,
    ) -> "LsmShape":
        """A database with these options updating `keys` keys, whose entries take
        `user_bytes_per_entry` as written and `table_bytes_per_entry` in a table."""
        return cls(
            flush_entries=options.memtable_bytes / (user_bytes_per_entry + ENTRY_OVERHEAD),
            table_bytes_per_entry=table_bytes_per_entry,
            user_bytes_per_entry=user_bytes_per_entry,
            keys=keys,
            level_base_bytes=options.level_base_bytes,
            level_multiplier=options.level_multiplier,
            l0_compaction_trigger=options.l0_compaction_trigger,
            l0_stop_trigger=options.l0_stop_trigger,
            target_file_size=options.target_file_size,
            num_levels=options.num_levels,
        )

    @property
    def flush_bytes(self) -> float:
        """s: one flushed memtable as an L0 table."""
        return self.flush_entries * self.table_bytes_per_entry

    @property
    def state_bytes(self) -> float:
        """D: the live data, every key once."""
        return self.keys * self.table_bytes_per_entry

    @property
    def table_bytes_per_user_byte(self) -> float:
        """phi."""
        return self.table_bytes_per_entry / self.user_bytes_per_entry

    def target(self, level: int) -> float:
        return self.level_base_bytes * self.level_multiplier ** (level - 1)


@dataclass(frozen=True)
class Amplification:
    """Compaction input bytes per flushed byte at the stop boundary, and where they come from."""

    by_output_level: tuple[float, ...]  # index n: the compactions into level n (0 at index 0)
    levels: tuple[float, ...]  # mean sizes of levels 1 .. num_levels-1 when L0 is compacted
    batch_bytes: float  # b
    distinct_fraction: float  # q
    total: float  # a


@dataclass(frozen=True)
class Costs:
    """Measured costs: worker seconds per compaction input byte (`c`) and, when writers share
    the workers' cores, the writers' CPU seconds per user byte (`w`) and the cores."""

    seconds_per_input_byte: float  # c
    writer_cpu_per_user_byte: float = 0.0  # w
    shared_cores: float | None = None  # P: None when the workers have cores of their own
    writer_cores: float | None = None  # P_w: cores the writers can use (None: no limit)


@functools.lru_cache(maxsize=64)
def amplification(shape: LsmShape, passes: int = 20, measured: int = 10) -> Amplification:
    """The write amplification `a` at the stop boundary (see the module docstring)."""
    if not 0 < measured <= passes:
        raise ValueError(f"need 0 < measured <= passes, got {measured} and {passes}")
    d, tf, last = shape.state_bytes, shape.target_file_size, shape.num_levels - 1
    batch = shape.l0_stop_trigger * shape.flush_bytes
    draws = shape.l0_stop_trigger * shape.flush_entries
    distinct = (1 - math.exp(-draws / shape.keys)) * shape.keys / draws
    l0_score = shape.l0_stop_trigger / shape.l0_compaction_trigger
    sizes = [0.0] * (last + 1)  # index: level; L0 is counted in tables, not here
    full = next((k for k in range(1, last) if d <= shape.target(k)), last)
    sizes[full] = d
    read = [0.0] * (last + 1)  # input bytes by output level, while measuring
    seen = [0.0] * (last + 1)  # level sizes summed over the measured L0 compactions
    flushed = counted = 0.0
    l0_compactions = 0
    while flushed < passes * d:
        measuring = flushed >= (passes - measured) * d
        _, level = max([(l0_score, 0)] + [(sizes[k] / shape.target(k), k) for k in range(1, last)])
        if level == 0:
            cost = batch + sizes[1]
            if measuring:
                seen = [a + b for a, b in zip(seen, sizes, strict=True)]
                l0_compactions += 1
                counted += batch
            sizes[1] += batch * distinct * (1 - sizes[1] / d)
            flushed += batch
        else:
            upper, below = sizes[level], sizes[level + 1]
            moved = min(tf, upper)
            cost = 0.0 if below == 0 else moved + moved * below / (2 * upper) + min(tf, below)
            sizes[level] -= moved
            sizes[level + 1] += moved * (1 - below / d)
        if measuring:
            read[level + 1] += cost
    return Amplification(
        by_output_level=(0.0, *(r / counted for r in read[1:])),
        levels=tuple(s / l0_compactions for s in seen[1:]),
        batch_bytes=batch,
        distinct_fraction=distinct,
        total=sum(read) / counted,
    )


def worker_seconds_per_user_byte(shape: LsmShape, seconds_per_input_byte: float) -> float:
    """tau = phi * a * c: worker time per user byte written."""
    return shape.table_bytes_per_user_byte * amplification(shape).total * seconds_per_input_byte


def sustained_rate(shape: LsmShape, costs: Costs, writers: int, workers: int) -> float:
    """R: the total user bytes/s M writers sustain without a stop, with K workers."""
    if writers < 1 or workers < 1:
        raise ValueError(f"writers ({writers}) and workers ({workers}) must be >= 1")
    tau = worker_seconds_per_user_byte(shape, costs.seconds_per_input_byte)
    rate = min(workers, writers) / tau
    w = costs.writer_cpu_per_user_byte
    if costs.shared_cores is not None:
        rate = min(rate, costs.shared_cores / (tau + w))
    if costs.writer_cores is not None and w > 0:
        rate = min(rate, costs.writer_cores / w)
    return rate


def max_writer_rate(shape: LsmShape, seconds_per_input_byte: float) -> float:
    """The most one writer can write (user bytes/s): its compactions run one at a time."""
    return 1 / worker_seconds_per_user_byte(shape, seconds_per_input_byte)


def workers_needed(
    shape: LsmShape,
    seconds_per_input_byte: float,
    writers: int,
    rate_per_writer: float,
    utilization: float = 1.0,
) -> int:
    """K: the workers (a core each) `writers` writers of `rate_per_writer` user bytes/s need."""
    if writers < 1 or rate_per_writer <= 0 or not 0 < utilization <= 1:
        raise ValueError(
            f"need writers >= 1 (got {writers}), rate_per_writer > 0 (got {rate_per_writer}) "
            f"and 0 < utilization <= 1 (got {utilization})"
        )
    limit = max_writer_rate(shape, seconds_per_input_byte)
    if rate_per_writer > limit:
        raise ValueError(
            f"a writer's compactions run one at a time: at most {limit:,.0f} B/s per writer, "
            f"got {rate_per_writer:,.0f}"
        )
    tau = worker_seconds_per_user_byte(shape, seconds_per_input_byte)
    # Rounded first, so that a product that is whole up to float noise needs no extra worker.
    return max(1, math.ceil(round(writers * rate_per_writer * tau / utilization, 9)))
