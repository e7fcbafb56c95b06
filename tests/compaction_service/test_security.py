"""Allowed roots (also through symbolic links), bearer tokens, TLS and undecodable requests:
rejected requests never reach a worker."""

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from compaction_service.convert import spec_to_proto
from compaction_service.dispatcher import delete_outputs
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.security import AccessDenied, RateLimitedLog, RootGuard
from compaction_service.server import UNDECODABLE_LOG_LIMIT, UNDECODABLE_LOG_S, TlsConfig
from statebackend.lsm.table import TableMeta
from tests.compaction_service.helpers import (
    DirWatch,
    blocking_compaction,
    make_spec,
    snapshot,
    table_names,
    wait_until,
    write_tables,
)


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
        "file:///srv/data/db\x00/x",
        "gcs://bucket/prefix/db",  # fsspec knows the scheme, but its driver is not installed
    ],
)
def test_urls_outside_the_roots_are_denied(url: str) -> None:
    with pytest.raises(AccessDenied):
        RootGuard(["file:///srv/data", "s3://bucket/prefix"]).check_url(url)


def test_spec_table_names_and_prefix_must_be_plain() -> None:
    guard = RootGuard(["file:///srv/data"])
    spec = make_spec("file:///srv/data/db", [])
    table = write_tables("memory://guard-test", tables=1, entries=5)[0]
    guard.confine(replace(spec, inputs=(replace(spec.inputs[0], tables=(table,)),)))
    for name in ("../../etc/passwd", "..", "a/b.sst", ""):
        bad = replace(spec, inputs=(replace(spec.inputs[0], tables=(replace(table, name=name),)),))
        with pytest.raises(AccessDenied):
            guard.confine(bad)


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


def _outside_and_escapes(tmp_path: Path) -> tuple[list[TableMeta], dict[str, str]]:
    """Tables in `outside/db` (not an allowed root), and for each way a symbolic link inside
    the allowed root `allowed` can lead there, a db_root that takes it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    inputs = write_tables(f"file://{outside}/db", tables=2, entries=50)
    allowed.mkdir()
    (allowed / "link").symlink_to(outside)
    (allowed / "up").symlink_to(tmp_path)
    (allowed / "linked-tables").mkdir()
    (allowed / "linked-tables" / "tables").symlink_to(outside / "db" / "tables")
    (allowed / "linked-file" / "tables").mkdir(parents=True)
    for table in inputs:
        (allowed / "linked-file" / "tables" / table.name).symlink_to(
            outside / "db" / "tables" / table.name
        )
    return inputs, {
        "db_root component": f"file://{allowed}/link/db",
        "parent": f"file://{allowed}/up/outside/db",
        "tables folder": f"file://{allowed}/linked-tables",
        "input table file": f"file://{allowed}/linked-file",
    }


def _watch(outside: Path) -> DirWatch:
    return DirWatch(outside, outside / "db", outside / "db" / "tables")


@pytest.mark.parametrize(
    "form", ["db_root component", "parent", "tables folder", "input table file"]
)
def test_symbolic_links_out_of_the_root_are_denied(start_service, tmp_path, form) -> None:
    inputs, escapes = _outside_and_escapes(tmp_path)
    outside = tmp_path / "outside"
    before = snapshot(outside)
    running = start_service()
    watch = _watch(outside)
    try:
        stub = running.stub()
        spec = make_spec(escapes[form], inputs)
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=30)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value.details()
        assert "outside the allowed roots" in error.value.details()
        assert stub.Status(pb.StatusRequest(), timeout=5).totals.accepted == 0
        running.service.stop()  # waits for every cleanup the service started
        assert watch.events() == []  # nothing outside was opened, read, written or created
    finally:
        watch.close()
    assert snapshot(outside) == before


def test_links_inside_the_root_are_followed(start_service, tmp_path) -> None:
    running = start_service()
    allowed = tmp_path / "allowed"
    inputs = write_tables(f"{running.root}/real/db", tables=2, entries=50)
    (allowed / "alias").symlink_to(allowed / "real")
    spec = make_spec(f"{running.root}/alias/db", inputs)
    response = running.stub().Compact(pb.CompactRequest(spec=spec_to_proto(spec)), timeout=60)
    outputs = {t.name for t in response.result.outputs}
    assert outputs and outputs <= table_names(f"{running.root}/real/db")


def test_a_worker_refuses_a_link_swapped_in_while_its_task_waited(start_service, tmp_path) -> None:
    """The servicer admits a request whose tables are inside the root; while it waits for the
    one worker, its `tables` folder becomes a link out of the root: the worker refuses it."""
    running = start_service(compaction_fn=blocking_compaction)  # one worker
    stub = running.stub()
    blocker = make_spec(f"{running.root}/blocker", write_tables(f"{running.root}/blocker", 1, 10))
    blocked = stub.Compact.future(pb.CompactRequest(spec=spec_to_proto(blocker)), timeout=120)
    wait_until(lambda: stub.Status(pb.StatusRequest(), timeout=5).running, what="blocker runs")
    victim_tables = tmp_path / "allowed" / "victim" / "tables"
    victim = make_spec(f"{running.root}/victim", write_tables(f"{running.root}/victim", 1, 10))
    outside = tmp_path / "outside"
    shutil.copytree(victim_tables, outside / "db" / "tables")  # the same names, outside
    before = snapshot(outside)
    waiting = stub.Compact.future(pb.CompactRequest(spec=spec_to_proto(victim)), timeout=120)
    wait_until(lambda: stub.Status(pb.StatusRequest(), timeout=5).queued == 1, what="queued")
    watch = _watch(outside)
    try:
        victim_tables.rename(victim_tables.with_name("tables-moved"))
        victim_tables.symlink_to(outside / "db" / "tables")
        cancel = pb.CancelRequest(db_root=blocker.db_root, compaction_id=blocker.compaction_id)
        assert stub.Cancel(cancel, timeout=5).cancelled  # frees the worker for the victim
        with pytest.raises(grpc.RpcError) as error:
            waiting.result()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value.details()
        with pytest.raises(grpc.RpcError):
            blocked.result()
        running.service.stop()  # waits for every cleanup the service started
        assert watch.events() == []
    finally:
        watch.close()
    assert snapshot(outside) == before


def test_deleting_outputs_never_leaves_the_roots(tmp_path) -> None:
    outside = tmp_path / "outside" / "tables"
    outside.mkdir(parents=True)
    (outside / "000001-ctest-r1s0-x.sst").write_bytes(b"someone else's")
    (tmp_path / "allowed" / "db").mkdir(parents=True)
    (tmp_path / "allowed" / "db" / "tables").symlink_to(outside)
    guard = RootGuard([f"file://{tmp_path}/allowed"])
    table = write_tables(f"file://{tmp_path}/allowed/other", tables=1, entries=5)[0]
    spec = make_spec(f"file://{tmp_path}/allowed/db", [table], output_prefix="000001-ctest-r1s0-")
    with pytest.raises(AccessDenied):
        delete_outputs(spec, {}, guard)
    assert (outside / "000001-ctest-r1s0-x.sst").read_bytes() == b"someone else's"


@pytest.mark.parametrize("root", ["gcs://bucket/db", "gs://bucket/db", "nosuchscheme://x"])
def test_a_scheme_without_a_driver_is_denied(start_service, root) -> None:
    running = start_service()
    table = write_tables("memory://driverless", tables=1, entries=5)
    with pytest.raises(grpc.RpcError) as error:
        running.stub().Compact(
            pb.CompactRequest(spec=spec_to_proto(make_spec(root, table))), timeout=5
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value.details()
    with pytest.raises(ValueError, match="allowed root"):
        RootGuard([root])


GARBAGE = b"\xff\xff\xff\xff\x0f not a protocol buffer"
UNDECODABLE_CALLS = {
    "/streamlet.compaction.v1.CompactionService/Compact": "unary_unary",
    "/streamlet.compaction.v1.CompactionService/Cancel": "unary_unary",
    "/streamlet.compaction.v1.CompactionService/Status": "unary_unary",
    "/grpc.health.v1.Health/Check": "unary_unary",
    "/grpc.health.v1.Health/Watch": "unary_stream",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": "stream_stream",
}


def _send_garbage(
    channel: grpc.Channel, method: str, shape: str, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    call = getattr(channel, shape)(method)  # no serializers: the raw bytes go on the wire
    request = iter([GARBAGE]) if shape.startswith("stream") else GARBAGE
    with pytest.raises(grpc.RpcError) as error:
        response = call(request, timeout=10, metadata=metadata)
        if shape.endswith("stream"):
            list(response)
    return error.value.code()


def test_undecodable_requests_are_refused_with_rate_limited_single_lines(
    start_service, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    running = start_service()
    channel = grpc.insecure_channel(running.address)
    started = time.monotonic()
    codes = [
        _send_garbage(channel, method, shape)
        for method, shape in UNDECODABLE_CALLS.items()
        for _ in range(5)
    ]
    compact = "/streamlet.compaction.v1.CompactionService/Compact"
    codes += [_send_garbage(channel, compact, "unary_unary") for _ in range(300)]
    elapsed = time.monotonic() - started
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}
    assert running.stub(channel).Status(pb.StatusRequest(), timeout=5).policy  # still serving
    assert "Traceback" not in caplog.text
    assert [r for r in caplog.records if r.exc_info] == []
    refused = [r for r in caplog.records if "refused an undecodable" in r.getMessage()]
    windows = 1 + int(elapsed // UNDECODABLE_LOG_S)
    assert 1 <= len(refused) <= UNDECODABLE_LOG_LIMIT * windows
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_rate_limited_log_counts_what_it_suppressed(caplog) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("ratelimit-test"), 3, 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="ratelimit-test"):
        for i in range(10):
            log.warning("line %d", i)
        now[0] = 10.0
        log.warning("line %d", 10)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "line 10 (7 similar lines suppressed)",
    ]


def test_the_token_is_checked_before_a_request_is_decoded(start_service) -> None:
    running = start_service(token="s3cret")
    channel = grpc.insecure_channel(running.address)
    good = (("authorization", "Bearer s3cret"),)
    for method, shape in UNDECODABLE_CALLS.items():
        if not method.startswith("/grpc.health"):  # health checks need no token
            assert _send_garbage(channel, method, shape) == grpc.StatusCode.UNAUTHENTICATED
        assert _send_garbage(channel, method, shape, good) == grpc.StatusCode.INVALID_ARGUMENT
