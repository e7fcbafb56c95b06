"""Pytest fixtures for real Kafka, S3 and child processes; load with ``pytest_plugins``.

This module owns the fixture names and lifetimes the test suite relies on:

- `kafka_broker` (session): a running `KafkaBroker` (Tansu, in-memory, 127.0.0.1).
- `s3_server` (session): a running `S3Server` (moto over HTTP, 127.0.0.1).
- `s3_bucket` (function): a fresh, uniquely named, empty `S3Bucket`; deleted afterwards.
- `process_runner` (function): a `ProcessRunner`; every process it started is SIGKILLed and
  reaped on teardown, even if the test failed.

Server and process logs are written under pytest's temporary directory (``--basetemp``, or
pytest's default which keeps the last few runs), so they can be read after a failure.
Load it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.support.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import s3fs

from tests.support.kafka_broker import KafkaBroker
from tests.support.processes import ProcessRunner
from tests.support.s3_server import S3Server

__all__ = ["S3Bucket", "kafka_broker", "process_runner", "s3_bucket", "s3_server"]


@dataclass(frozen=True)
class S3Bucket:
    """One bucket on the test S3 server."""

    name: str
    server: S3Server

    @property
    def url(self) -> str:
        """``"s3://<name>"``."""
        return f"s3://{self.name}"

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def storage_options(self) -> dict[str, Any]:
        """A fresh copy of the fsspec/s3fs options for the server (safe to modify)."""
        return self.server.storage_options()

    def path(self, *parts: str) -> str:
        """``"s3://<name>/<part>/<part>..."``."""
        return "/".join([self.url, *(part.strip("/") for part in parts)])

    def filesystem(self) -> s3fs.S3FileSystem:
        """A new (never cached) s3fs filesystem for the server."""
        return self.server.filesystem()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Tansu broker shared by the whole session; use unique topic and group names.

    Tests that kill or restart a broker must start their own `KafkaBroker` instead.
    """
    with KafkaBroker(log_dir=tmp_path_factory.mktemp("kafka-broker")) as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server shared by the whole session; prefer the `s3_bucket` fixture."""
    with S3Server(log_dir=tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[S3Bucket]:
    """A new empty bucket for one test, deleted with its contents afterwards."""
    bucket = S3Bucket(name=s3_server.create_bucket(), server=s3_server)
    try:
        yield bucket
    finally:
        # Drop instances the test created through fsspec.filesystem(...) / fsspec.open(...).
        s3fs.S3FileSystem.clear_instance_cache()
        s3_server.delete_bucket(bucket.name)


@pytest.fixture
def process_runner(tmp_path: Path) -> Iterator[ProcessRunner]:
    """Starts child processes (logs in the test's tmp_path) and SIGKILLs leftovers after."""
    runner = ProcessRunner(log_dir=tmp_path / "processes")
    try:
        yield runner
    finally:
        runner.stop_all()
