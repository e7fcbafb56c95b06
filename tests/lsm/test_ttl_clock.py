"""TTL in compactions follows the backend's injected clock, never the wall clock."""

import time
import uuid
from pathlib import Path

from statebackend import BackendConfig, TtlConfig, ValueStateDescriptor, create_backend
from tests.conformance.conftest import ManualClock

HOUR_MS = 3600 * 1000
KEYS = 300


def test_compactions_expire_entries_by_the_backends_clock(tmp_path: Path) -> None:
    clock = ManualClock(time.time_ns() // 1_000_000 - 24 * HOUR_MS)  # a day behind wall time
    config = BackendConfig(
        "lsm",
        checkpoint_dir=f"memory://ttl-clock-{uuid.uuid4().hex}",
        local_dir=str(tmp_path / "local"),
        options={"lsm.memtable_bytes": 4096, "lsm.block_size": 512},
    )
    backend = create_backend(config, scope="op/0", clock=clock)
    try:
        state = backend.get_state(ValueStateDescriptor("v", ttl=TtlConfig.seconds(3600)))
        for i in range(KEYS):
            backend.set_current_key(i)
            state.update(f"value-{i}")
        db = backend.store.db
        db.compact()
        installed = db.compactions_installed
        assert installed >= 1
        for i in range(KEYS):
            backend.set_current_key(i)
            assert state.value() == f"value-{i}"
        assert len(list(db.scan(None, None))) == KEYS  # nothing dropped

        clock.advance(HOUR_MS)  # now every value has expired, by the backend's clock
        db.put(b"\xff-a-new-table", b"\x00x")  # so that the full compaction has work to do
        db.compact()
        assert db.compactions_installed == installed + 1
        assert list(db.scan(None, None)) == [(b"\xff-a-new-table", b"\x00x")]
    finally:
        backend.dispose()
