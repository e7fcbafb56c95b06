"""Fixtures of the compaction service tests: in-process services, stubs, clients, TLS material."""

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compaction_service.client import RemoteCompactor
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from compaction_service.server import BackgroundService, ServiceConfig


@dataclass
class Running:
    service: BackgroundService
    root: str  # an allowed root, with a DB directory below it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.service.port}"

    def stub(self, channel: grpc.Channel | None = None) -> pb_grpc.CompactionServiceStub:
        return pb_grpc.CompactionServiceStub(channel or grpc.insecure_channel(self.address))


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Starts in-process services (port 0: a free 127.0.0.1 port); all stopped at teardown."""
    started: list[BackgroundService] = []

    def start(**overrides: Any) -> Running:
        root = f"file://{tmp_path}/allowed"
        fields: dict[str, Any] = {"allowed_roots": (root,), "workers": 1}
        fields.update(overrides)
        service = BackgroundService(ServiceConfig(**fields))
        started.append(service)
        service.start()
        return Running(service, root)

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def compactors() -> Iterator[Callable[..., RemoteCompactor]]:
    """Makes RemoteCompactors (a long breaker back-off unless given); all closed at teardown."""
    made: list[RemoteCompactor] = []

    def make(endpoints: Any, **options: Any) -> RemoteCompactor:
        options.setdefault("backoff_s", 30.0)
        compactor = RemoteCompactor(endpoints, **options)
        made.append(compactor)
        return compactor

    yield make
    for compactor in made:
        compactor.close()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    d = tmp_path_factory.mktemp("tls")
    ca_key, other_ca_key = _key(), _key()
    ca = _cert("test-ca", ca_key, None, ca=True)
    other_ca = _cert("other-ca", other_ca_key, None, ca=True)
    _write(d / "ca.pem", ca, ca_key)
    server_key, client_key, other_key = _key(), _key(), _key()
    _write(d / "server.pem", _cert("localhost", server_key, (ca, ca_key)), server_key)
    _write(d / "client.pem", _cert("client", client_key, (ca, ca_key)), client_key)
    _write(d / "other.pem", _cert("intruder", other_key, (other_ca, other_ca_key)), other_key)
    return TlsFiles(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_client_cert=d / "other.pem",
        other_client_key=d / "other.key",
    )
