"""A compaction that waits for the test, for drain tests: `gated_compaction` runs in a compaction
service's worker processes (it must be importable by a spawned process).

It writes a partial output (as a compaction that runs does), touches
`<db_root>/started-<compaction id>`, waits while `<db_root>/hold` exists (at most `HOLD_LIMIT_S`),
then removes the partial output and compacts for real. `python -m tests.cluster.gated ROOT GRACE`
serves it as `streamlet compaction-service` would (one worker, drain grace GRACE seconds).
"""

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from compaction_service.cli import run
from compaction_service.server import ServiceConfig
from statebackend.lsm.compaction_job import CompactionResult, CompactionSpec, run_compaction

HOLD_LIMIT_S = 60.0


def db_path(db_root: str) -> Path:
    """The local directory of a `file://` database root."""
    return Path(urlparse(db_root).path)


def gated_compaction(
    spec: CompactionSpec, storage_options: Mapping[str, Any], creator: str
) -> CompactionResult:
    root = db_path(spec.db_root)
    partial = root / "tables" / f"{spec.output_prefix}partial-0000.sst"
    partial.write_bytes(b"partial")
    (root / f"started-{spec.compaction_id}").touch()
    deadline = time.monotonic() + HOLD_LIMIT_S
    while (root / "hold").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    partial.unlink()
    return run_compaction(spec, storage_options, creator)


if __name__ == "__main__":
    allowed_root, grace = sys.argv[1], float(sys.argv[2])
    run(
        ServiceConfig(allowed_roots=(allowed_root,), workers=1, compaction_fn=gated_compaction),
        drain_grace_s=grace,
    )
