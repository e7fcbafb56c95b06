"""LSM options are checked together when a DB opens: a clear error, never a writer that hangs."""

import dataclasses
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from statebackend import BackendConfig, ValueStateDescriptor, create_backend
from statebackend.lsm import options as options_module
from statebackend.lsm.options import LsmOptions

OPEN_TIMEOUT_S = 60.0


def open_and_write(tmp_path: Path, options: dict[str, Any]) -> BaseException | None:
    """Open an lsm backend with `options` and write through a few memtables, in a thread bounded
    by OPEN_TIMEOUT_S; returns what it raised (None: it succeeded)."""
    config = BackendConfig(
        "lsm",
        checkpoint_dir=f"memory://options-{uuid.uuid4().hex}",
        local_dir=str(tmp_path / "local"),
        options={"lsm.memtable_bytes": 1024, **options},
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            backend = create_backend(config, scope="op/0")
        except BaseException as e:  # noqa: BLE001 - returned to the test
            raised.append(e)
            return
        state = backend.get_state(ValueStateDescriptor("v"))
        for i in range(3000):
            backend.set_current_key(i)
            state.update("x" * 40)
        backend.dispose()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(OPEN_TIMEOUT_S)
    assert not thread.is_alive(), f"open and write with {options} hung"
    return raised[0] if raised else None


def test_l0_triggers_out_of_order_are_refused_at_open(tmp_path: Path) -> None:
    error = open_and_write(tmp_path, {"lsm.l0_compaction_trigger": 30, "lsm.l0_stop_trigger": 3})
    assert isinstance(error, ValueError)
    message = str(error)
    assert "lsm.l0_compaction_trigger (30) must be <= lsm.l0_slowdown_trigger (12)" in message
    assert "lsm.l0_slowdown_trigger (12) must be <= lsm.l0_stop_trigger (3)" in message


def test_the_same_options_in_order_work(tmp_path: Path) -> None:
    options = {"lsm.l0_compaction_trigger": 2, "lsm.l0_slowdown_trigger": 2}
    assert open_and_write(tmp_path, {**options, "lsm.l0_stop_trigger": 3}) is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("memtable_bytes", 0, "lsm.memtable_bytes must be >= 1, got 0"),
        ("max_immutables", 0, "lsm.max_immutables must be >= 1, got 0"),
        ("num_levels", 1, "lsm.num_levels must be >= 2, got 1"),
        ("target_file_size", -5, "lsm.target_file_size must be >= 1, got -5"),
        ("max_compactions", 0, "lsm.max_compactions must be >= 1, got 0"),
        ("compaction_workers", 0, "lsm.compaction_workers must be >= 1, got 0"),
        ("block_cache_bytes", -1, "lsm.block_cache_bytes must be >= 0, got -1"),
        ("slowdown_sleep_s", float("nan"), "lsm.slowdown_sleep_s must be >= 0, got nan"),
        ("compaction_timeout_s", 0, "lsm.compaction_timeout_s must be > 0, got 0"),
        ("gc_interval_s", -1.0, "lsm.gc_interval_s must be > 0, got -1.0"),
        ("io_retries", -1, "lsm.io_retries must be >= 0, got -1"),
    ],
)
def test_out_of_range_option_is_named_with_its_value(
    tmp_path: Path, name: str, value: Any, expected: str
) -> None:
    error = open_and_write(tmp_path, {f"lsm.{name}": value})
    assert isinstance(error, ValueError) and expected in str(error)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ValueError) as raised:
        LsmOptions(memtable_bytes=0, num_levels=0, l0_compaction_trigger=21)
    message = str(raised.value)
    assert message.startswith("invalid LSM options: ")
    for part in ["lsm.memtable_bytes", "lsm.num_levels", "lsm.l0_compaction_trigger (21)"]:
        assert part in message


def test_every_numeric_option_has_a_range() -> None:
    numeric = {
        f.name for f in dataclasses.fields(LsmOptions) if f.type in (int, float, "int", "float")
    }
    checked = set(options_module._MINIMUMS) | set(options_module._POSITIVE)
    assert numeric == checked
