"""LSM options for tests: tiny memtables, blocks and tables, so a few writes exercise flushes and
compactions; no garbage-collection grace and fast retries."""

from typing import Any

from statebackend.lsm.db import LsmOptions
from statebackend.lsm.table import TableOptions


def small_options(**overrides: Any) -> LsmOptions:
    base: dict[str, Any] = dict(
        memtable_bytes=4096,
        table=TableOptions(block_size=512),
        target_file_size=4096,
        level_base_bytes=16384,
        l0_compaction_trigger=3,
        gc_grace_s=0,
        gc_interval_s=3600,
        retry_backoff_s=0.001,
    )
    base.update(overrides)
    return LsmOptions(**base)
