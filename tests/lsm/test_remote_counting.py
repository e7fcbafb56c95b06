"""Where a compaction ran is part of its result: the DB counts a remote one as remote, also when
it produced no output table (every entry deleted or expired)."""

import uuid
from pathlib import Path

from compaction_service.client import RemoteCompactor
from compaction_service.server import BackgroundService, ServiceConfig
from statebackend.keygroups import KeyGroupRange
from statebackend.lsm.backend import LsmStoreFactory
from statebackend.store import StoreContext


def test_a_remote_compaction_without_outputs_counts_as_remote(tmp_path: Path) -> None:
    allowed = f"file://{tmp_path}/allowed"
    with BackgroundService(ServiceConfig(allowed_roots=(allowed,), workers=1)) as service:
        compactor = RemoteCompactor([f"127.0.0.1:{service.port}"], deadline_s=60)
        factory = LsmStoreFactory(compactor)
        context = StoreContext(
            scope=f"job/op-{uuid.uuid4().hex[:8]}/0",
            key_group_range=KeyGroupRange(0, 127),
            checkpoint_dir=allowed,
            local_dir=str(tmp_path / "local"),
            options={"lsm.memtable_bytes": 4096, "lsm.auto_compact": False},
        )
        store = factory.open(context, None)
        try:
            db = store.db
            for i in range(300):
                store.put(b"k%04d" % i, b"\x00value")
            db.flush()
            for i in range(300):
                store.delete(b"k%04d" % i)
            db.flush()
            db.compact()  # bottommost: every tombstone and what it deletes is dropped
            assert not list(db.version.tables())  # the compaction wrote no table
            assert compactor.stats.remote_ok == 1 and compactor.stats.fallbacks == 0
            metrics = store.metrics()
            assert metrics["compactions_remote"] == 1
            assert metrics["compactions_local"] == 0
            assert metrics["compaction_cpu_seconds_local"] == 0
        finally:
            store.dispose()
            compactor.close()
