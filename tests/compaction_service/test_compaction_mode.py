"""The `remote` compaction mode: an lsm backend configured with a service address offloads."""

import pytest

from compaction_service.client import remote_compactor
from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from statebackend.lsm.compactor import create_compactor, register_compaction_mode

register_compaction_mode("remote", remote_compactor)  # as the runtime does (streamlet.compaction)


def test_unknown_mode_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'nosuch'.*local, remote"):
        create_compactor("nosuch", {}, False)


def test_remote_mode_needs_an_address() -> None:
    with pytest.raises(ValueError, match="compaction.service.address"):
        create_compactor("remote", {"compaction_service_address": " , "}, False)


def test_backend_in_remote_mode_compacts_on_the_service(start_service, tmp_path) -> None:
    service = start_service()
    config = BackendConfig(
        "lsm",
        checkpoint_dir=f"{service.root}/state",
        local_dir=str(tmp_path / "local"),
        options={
            "compaction_mode": "remote",
            "compaction_service_address": service.address,
            "lsm.memtable_bytes": 16 << 10,
            "lsm.l0_compaction_trigger": 2,
        },
    )
    backend = create_backend(config, scope="job/op/0")
    state = backend.get_state(ValueStateDescriptor("v"))
    for i in range(3000):
        backend.set_current_key(i)
        state.update("x" * 50)
    db = backend.store.db
    db.flush()
    db.compact()
    compactor = db.compactor
    assert compactor.stats.remote_ok >= 1
    assert compactor.stats.fallbacks == 0
    metrics = backend.store.metrics()
    assert metrics["compactions_remote"] == compactor.stats.remote_ok
    assert metrics["compactions_local"] == 0
    assert metrics["compaction_cpu_seconds_remote"] > 0
    for i in range(0, 3000, 97):
        backend.set_current_key(i)
        assert state.value() == "x" * 50
    backend.dispose()
