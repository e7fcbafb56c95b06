"""`LsmOptions`: the tuning of one LSM database, checked as a whole when it is built.

Every numeric field has a range, and some fields only make sense together (a writer that waits for
an L0 compaction that the compaction trigger never starts would wait forever). A bad combination
raises one ValueError that names every offending option (as `lsm.<name>`, the way the `lsm`
backend reads it) with its value, before any file is touched.
"""

import math
from dataclasses import dataclass, field

from statebackend.lsm.table import TableOptions

PREFIX = "lsm."


@dataclass(frozen=True)
class LsmOptions:
    """Tuning of one DB (the `lsm` backend reads each field as option `lsm.<name>`)."""

    memtable_bytes: int = 8 << 20
    max_immutables: int = 2  # writers wait when this many memtables await flushing
    num_levels: int = 7
    l0_compaction_trigger: int = 4
    l0_slowdown_trigger: int = 12  # each memtable switch sleeps slowdown_sleep_s
    l0_stop_trigger: int = 20  # memtable switches wait for compaction
    slowdown_sleep_s: float = 0.005
    level_base_bytes: int = 64 << 20
    level_multiplier: int = 10
    target_file_size: int = 16 << 20
    table: TableOptions = field(default_factory=TableOptions)
    block_cache_bytes: int = 64 << 20  # 0 disables the block cache
    file_cache_bytes: int = 0  # whole tables on local disk; 0 disables
    local_dir: str | None = None  # for the file cache (default: the system temp dir)
    auto_compact: bool = True
    max_compactions: int = 2  # running at once
    compaction_workers: int = 2  # of the LocalCompactor the DB creates when none is given
    compaction_timeout_s: float = 600.0
    gc_grace_s: float = 300.0
    gc_interval_s: float = 60.0
    manifest_retention: int = 4
    io_retries: int = 3  # retries of a failed DFS write (flush, manifest) before giving up
    retry_backoff_s: float = 0.05  # doubled per retry; also the first back-off of a compaction

    def __post_init__(self) -> None:
        problems = self._range_problems() + self._relation_problems()
        if problems:
            raise ValueError("invalid LSM options: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        problems = []
        for name, minimum in _MINIMUMS.items():
            value = getattr(self, name)
            if not (_is_number(value) and value >= minimum):
                problems.append(f"{_name(name)} must be >= {minimum}, got {value!r}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if not (_is_number(value) and value > 0):
                problems.append(f"{_name(name)} must be > 0, got {value!r}")
        return problems

    def _relation_problems(self) -> list[str]:
        problems = []
        for low, high in zip(_L0_TRIGGERS, _L0_TRIGGERS[1:], strict=False):
            a, b = getattr(self, low), getattr(self, high)
            if _is_number(a) and _is_number(b) and a > b:
                problems.append(f"{_name(low)} ({a!r}) must be <= {_name(high)} ({b!r})")
        return problems


# Numeric fields and their least allowed value; the fields in _POSITIVE must be above 0.
_MINIMUMS = {
    "memtable_bytes": 1,
    "max_immutables": 1,
    "num_levels": 2,
    "l0_compaction_trigger": 1,
    "l0_slowdown_trigger": 1,
    "l0_stop_trigger": 1,
    "slowdown_sleep_s": 0,
    "level_base_bytes": 1,
    "level_multiplier": 1,
    "target_file_size": 1,
    "block_cache_bytes": 0,
    "file_cache_bytes": 0,
    "max_compactions": 1,
    "compaction_workers": 1,
    "gc_grace_s": 0,
    "manifest_retention": 1,
    "io_retries": 0,
    "retry_backoff_s": 0,
}
_POSITIVE = ("compaction_timeout_s", "gc_interval_s")
# Each must be <= the next: a writer stopped at L0's stop trigger waits for a compaction that
# only starts at the compaction trigger.
_L0_TRIGGERS = ("l0_compaction_trigger", "l0_slowdown_trigger", "l0_stop_trigger")


def _name(field_name: str) -> str:
    return PREFIX + field_name


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)

