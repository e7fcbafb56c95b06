"""Allowed roots, bearer tokens and TLS: rejected requests never reach a worker."""

from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compaction_service.convert import spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.security import AccessDenied, RootGuard
from compaction_service.server import TlsConfig
from tests.compaction_service.helpers import make_spec, write_tables


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/data/db",
        "/srv/data/db",
        "file:///srv/data",
        "file:///srv/data/./x/db",
        "s3://bucket/prefix/db",
        "s3a://bucket/prefix/db",
    ],
)
def test_urls_below_a_root_are_allowed(url: str) -> None:
    RootGuard(["file:///srv/data", "s3://bucket/prefix"]).check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "file:///srv/data/../etc",
        "file:///srv/data/db/../../etc",
        "/srv/data/..",
        "file:///etc/passwd",
        "/srv/database",  # a sibling sharing the root's name as a prefix
        "memory:///srv/data/db",
        "s3://srv/data/db",
        "s3://bucket/prefix2/db",
        "simplecache::file:///srv/data/db",
        "nosuchscheme://srv/data/db",
        "s3://bucket/prefix/..\\..\\x",
    ],
)
def test_urls_outside_the_roots_are_denied(url: str) -> None:
    with pytest.raises(AccessDenied):
        RootGuard(["file:///srv/data", "s3://bucket/prefix"]).check_url(url)


def test_spec_table_names_and_prefix_must_be_plain() -> None:
    guard = RootGuard(["file:///srv/data"])
    spec = make_spec("file:///srv/data/db", [])
    table = write_tables("memory://guard-test", tables=1, entries=5)[0]
    guard.check_spec(replace(spec, inputs=(replace(spec.inputs[0], tables=(table,)),)))
    for name in ("../../etc/passwd", "..", "a/b.sst", ""):
        bad = replace(spec, inputs=(replace(spec.inputs[0], tables=(replace(table, name=name),)),))
        with pytest.raises(AccessDenied):
            guard.check_spec(bad)


def test_permission_denied_over_grpc_and_nothing_is_written(start_service, tmp_path) -> None:
    running = start_service()
    outside = f"file://{tmp_path}/outside/db"
    inputs = write_tables(outside, tables=1, entries=10)
    stub = running.stub()
    for root in (outside, f"{running.root}/../outside/db", "memory://x/db"):
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(pb.CompactRequest(spec=spec_to_proto(make_spec(root, inputs))), timeout=5)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(list((tmp_path / "outside/db/tables").iterdir())) == 1
    assert stub.Status(pb.StatusRequest(), timeout=5).totals.accepted == 0


def test_bearer_token(start_service) -> None:
    running = start_service(token="s3cret")
    channel = grpc.insecure_channel(running.address)
    stub = running.stub(channel)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
        with pytest.raises(grpc.RpcError) as error:
            stub.Status(pb.StatusRequest(), timeout=5, metadata=metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.Status(
        pb.StatusRequest(), timeout=5, metadata=(("authorization", "Bearer s3cret"),)
    ).policy
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token


def _secure_stub(running, ca, cert=None, key=None):
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )
    return running.stub(grpc.secure_channel(running.address, credentials))


def test_server_tls(start_service, tls_files) -> None:
    t = tls_files
    running = start_service(tls=TlsConfig(str(t.server_cert), str(t.server_key)))
    assert _secure_stub(running, t.ca).Status(pb.StatusRequest(), timeout=5).policy
    with pytest.raises(grpc.RpcError) as error:
        running.stub().Status(pb.StatusRequest(), timeout=2)  # plaintext
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(start_service, tls_files) -> None:
    t = tls_files
    running = start_service(tls=TlsConfig(str(t.server_cert), str(t.server_key), str(t.ca)))
    good = _secure_stub(running, t.ca, t.client_cert, t.client_key)
    assert good.Status(pb.StatusRequest(), timeout=5).policy
    for stub in (
        _secure_stub(running, t.ca),
        _secure_stub(running, t.ca, t.other_client_cert, t.other_client_key),
    ):
        with pytest.raises(grpc.RpcError) as error:
            stub.Status(pb.StatusRequest(), timeout=2)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
