"""Fixtures of the backend conformance suite: every test runs against every backend.

A new backend joins the suite by adding a variant to `VARIANTS`.
"""

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from statebackend import BackendConfig, KeyedStateBackend, KeyGroupRange, create_backend
from tests.support.checkpoints import referenced_files

# (backend, where its checkpoint_dir lives): every backend on local files, and the disaggregated
# `lsm` also on an in-process file system and on S3 (the moto server), where its tables live.
VARIANTS = {
    "memory": ("memory", "file"),
    "rocksdb": ("rocksdb", "file"),
    "lsm": ("lsm", "file"),
    "lsm-memfs": ("lsm", "memory"),
    "lsm-s3": ("lsm", "s3"),
}
# Variants whose checkpoints another process can read.
PERSISTENT_VARIANTS = [name for name, (_, storage) in VARIANTS.items() if storage != "memory"]


class ManualClock:
    """A clock (milliseconds) that moves only when told to."""

    def __init__(self, now_ms: int = 1_700_000_000_000):
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend_name(variant: str) -> str:
    return VARIANTS[variant][0]


@pytest.fixture
def config(variant: str, request: pytest.FixtureRequest, tmp_path: Any) -> BackendConfig:
    name, storage = VARIANTS[variant]
    local_dir = str(tmp_path / "local")
    if storage == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return BackendConfig(
            name,
            checkpoint_dir=bucket.path("checkpoints"),
            local_dir=local_dir,
            storage_options=bucket.storage_options,
        )
    if storage == "memory":
        return BackendConfig(
            name, checkpoint_dir=f"memory://{uuid.uuid4().hex}/checkpoints", local_dir=local_dir
        )
    return BackendConfig(name, checkpoint_dir=f"file://{tmp_path}/checkpoints", local_dir=local_dir)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


OpenBackend = Callable[..., KeyedStateBackend]


@pytest.fixture
def open_backend(config: BackendConfig, clock: ManualClock) -> Iterator[OpenBackend]:
    """Opens backends of the parametrized kind (scope "op/0", all key groups) and disposes them."""
    opened: list[KeyedStateBackend] = []

    def open_(**kwargs: Any) -> KeyedStateBackend:
        kwargs.setdefault("scope", "op/0")
        kwargs.setdefault("clock", clock)
        backend = create_backend(kwargs.pop("config", config), **kwargs)
        opened.append(backend)
        return backend

    yield open_
    for backend in opened:
        backend.dispose()


@pytest.fixture
def backend(open_backend: OpenBackend) -> KeyedStateBackend:
    return open_backend()


def subtask_ranges(max_parallelism: int, parallelism: int) -> list[KeyGroupRange]:
    return [KeyGroupRange.of_subtask(max_parallelism, parallelism, i) for i in range(parallelism)]


def checkpoint_files(handle: dict) -> list[str]:
    """The checkpoint files a handle references, whatever the backend's handle layout."""
    found = referenced_files(handle["store"])
    assert found, "the handle references no files"
    return found
