"""A real S3-compatible HTTP server for tests: moto's standalone server on 127.0.0.1.

This module owns starting and stopping the server and how tests talk to it through s3fs.
The server runs as a separate process::

    python -m moto.server -H 127.0.0.1 -p PORT      (with MOTO_PORT=PORT)

and is ready when an S3 ListBuckets request over HTTP answers. All data is in memory and
lives as long as the process.

`storage_options()` gives fsspec/s3fs options that are plain JSON-compatible values, so they
can also be handed to child processes. Bucket creation through s3fs (`fs.mkdir("bucket")`)
works because the region is not us-east-1 (s3fs always sends a LocationConstraint, which S3
rejects for us-east-1). s3fs caches filesystem instances per set of options; the cache is
cleared when the server stops so no test gets an instance pointing at a dead server.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import s3fs

from tests.support.ports import LOOPBACK
from tests.support.processes import ManagedProcess, start_server

REGION = "eu-west-1"
ACCESS_KEY = "streamlet-test-key"
SECRET_KEY = "streamlet-test-secret"


class S3Server:
    """A moto server process; use as a context manager or call start() / stop()."""

    def __init__(self, log_dir: Path | None = None, *, startup_timeout: float = 30.0) -> None:
        """`log_dir` receives the server log; if None a temp dir is used and removed on stop()."""
        self._owns_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.startup_timeout = startup_timeout
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the S3 server is not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """``"http://127.0.0.1:PORT"``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        """The server process (its `log_path` and `output()` help diagnose failures)."""
        if self._process is None:
            raise RuntimeError("the S3 server is not started")
        return self._process

    def start(self) -> S3Server:
        """Start the server and block until it answers an S3 ListBuckets request."""
        if self._process is not None:
            raise RuntimeError("the S3 server is already started")
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="s3-server-"))
        try:
            self._process, self._port = start_server(
                self._launch, _probe_list_buckets, timeout=self.startup_timeout
            )
        except BaseException:
            self._cleanup_log_dir()
            raise
        return self

    def stop(self) -> None:
        """SIGKILL the server (its data is in memory only) and reap it. Idempotent."""
        s3fs.S3FileSystem.clear_instance_cache()
        if self._process is not None:
            self._process.kill()
            self._process = None
            self._port = None
        self._cleanup_log_dir()

    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server: ``fsspec.filesystem("s3", **options)``.

        The listings cache is off: other processes write to the same buckets in tests, and
        a cached listing would hide their files.
        """
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": REGION},
            "use_listings_cache": False,
        }

    def filesystem(self) -> s3fs.S3FileSystem:
        """A new (never cached) s3fs filesystem talking to this server."""
        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options())

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique ``test-...`` name if none given) and return its name."""
        bucket = name or f"test-{uuid.uuid4().hex[:16]}"
        self.filesystem().mkdir(bucket)
        return bucket

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it; a missing bucket is not an error."""
        fs = self.filesystem()
        if fs.exists(name):
            fs.rm(name, recursive=True)

    def _launch(self, port: int) -> ManagedProcess:
        assert self.log_dir is not None
        process = ManagedProcess(
            [sys.executable, "-u", "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
            name=f"moto-{port}",
            log_dir=self.log_dir,
            env={"MOTO_PORT": str(port), "PYTHONUNBUFFERED": "1"},
        )
        return process.start()

    def _cleanup_log_dir(self) -> None:
        if self._owns_log_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = None


def _probe_list_buckets(port: int) -> None:
    """Raise unless an S3 ListBuckets request to the server on `port` succeeds."""
    url = f"http://{LOOPBACK}:{port}/"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    with direct.open(url, timeout=5.0) as response:
        body = response.read()
    if b"ListAllMyBucketsResult" not in body:
        raise ValueError(f"unexpected answer from {url}: {body[:200]!r}")
