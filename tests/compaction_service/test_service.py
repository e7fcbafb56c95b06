"""The service through its gRPC API: results, subcompactions, status, errors, cancellation."""

import math
import time
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from compaction_service.convert import SPEC_RANGES, range_text, result_from_proto, spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from statebackend.lsm.compaction_job import run_compaction
from tests.compaction_service.helpers import (
    blocking_compaction,
    failing_compaction,
    make_spec,
    read_outputs,
    set_spec_field,
    table_names,
    wait_until,
    write_tables,
)


def _request(spec, subcompactions: bool = False) -> pb.CompactRequest:
    return pb.CompactRequest(spec=spec_to_proto(spec), allow_subcompactions=subcompactions)


def test_remote_result_equals_local_and_subcompactions_join(start_service) -> None:
    running = start_service(workers=2, subcompaction_min_bytes=256 << 10)
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=4, entries=8000))
    expected = read_outputs(root, run_compaction(spec))
    stub = running.stub()

    whole = stub.Compact(_request(spec), timeout=30)
    split = stub.Compact(_request(spec, subcompactions=True), timeout=30)

    assert whole.subcompactions == 1 and split.subcompactions == 2
    assert 0 <= whole.queue_seconds < 5 and 0 <= split.queue_seconds < 5
    for response in (whole, split):
        result = result_from_proto(response.result)
        assert result.compaction_id == spec.compaction_id
        assert all(t.name.startswith(spec.output_prefix) for t in result.outputs)
        assert all(t.creator.startswith("remote:") for t in result.outputs)
        assert read_outputs(root, result) == expected
        assert result.stats.output_entries == len(expected)
    status = stub.Status(pb.StatusRequest(), timeout=5)
    assert status.totals.accepted == 2 and status.totals.completed == 3
    assert [w.completed for w in status.workers] and sum(w.completed for w in status.workers) == 3
    assert status.queued == 0 and not status.running and status.policy == "round_robin"


def test_health_and_reflection(start_service) -> None:
    running = start_service()
    channel = grpc.insecure_channel(running.address)
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for s in answer.list_services_response.service}
    assert "streamlet.compaction.v1.CompactionService" in names
    assert "grpc.health.v1.Health" in names


def test_malformed_requests_get_invalid_argument(start_service) -> None:
    running = start_service()
    root = f"{running.root}/db"
    good = spec_to_proto(make_spec(root, write_tables(root, tables=1, entries=10)))
    broken = [pb.CompactionSpec()]
    for mutate in (
        lambda m: setattr(m, "spec_version", 99),
        lambda m: setattr(m.table_options, "compression", "lz4"),
        lambda m: m.ClearField("table_options"),
        lambda m: setattr(m, "target_file_size", 0),
        lambda m: setattr(m, "output_prefix", "a/b"),
        lambda m: m.ClearField("inputs"),
        lambda m: setattr(m.key_range, "start", b"z") or setattr(m.key_range, "end", b"a"),
    ):
        m = pb.CompactionSpec()
        m.CopyFrom(good)
        mutate(m)
        broken.append(m)
    stub = running.stub()
    for spec in broken:
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(pb.CompactRequest(spec=spec), timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, spec
    assert stub.Compact(pb.CompactRequest(spec=good), timeout=30).result.outputs


def test_message_size_limit(start_service) -> None:
    running = start_service(max_message_bytes=2048)
    root = f"{running.root}/db"
    (table,) = write_tables(root, tables=1, entries=10)
    spec = make_spec(root, [replace(table, name=f"t{i:05d}.sst") for i in range(100)])
    with pytest.raises(grpc.RpcError) as error:
        running.stub().Compact(_request(spec), timeout=5)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_failed_compaction_is_internal_and_service_goes_on(start_service) -> None:
    running = start_service(compaction_fn=failing_compaction)
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=1, entries=10))
    stub = running.stub()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(_request(spec), timeout=10)
        assert error.value.code() == grpc.StatusCode.INTERNAL
        assert "disk on fire" in error.value.details()
    assert stub.Status(pb.StatusRequest(), timeout=5).totals.failed == 2


def _partial_outputs(root: str, spec) -> set[str]:
    return {n for n in table_names(root) if n.startswith(spec.output_prefix)}


def test_full_queue_is_rejected_at_once_and_cancel_kills_the_work(start_service) -> None:
    running = start_service(compaction_fn=blocking_compaction, queue_capacity=1)
    root = f"{running.root}/db"
    inputs = write_tables(root, tables=1, entries=10)
    first, second, third = (make_spec(root, inputs) for _ in range(3))
    stub = running.stub()
    first_call = stub.Compact.future(_request(first), timeout=60)
    wait_until(lambda: _partial_outputs(root, first), what="the first compaction started")
    second_call = stub.Compact.future(_request(second), timeout=60)
    wait_until(lambda: stub.Status(pb.StatusRequest(), timeout=5).queued == 1, what="queued")

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        stub.Compact(_request(third), timeout=60)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 2.0

    for spec, call in ((second, second_call), (first, first_call)):
        cancel = stub.Cancel(
            pb.CancelRequest(db_root=root, compaction_id=spec.compaction_id), timeout=5
        )
        assert cancel.cancelled
        with pytest.raises(grpc.RpcError) as error:
            call.result()
        assert error.value.code() == grpc.StatusCode.CANCELLED
    wait_until(lambda: not _partial_outputs(root, first), what="partial outputs deleted")
    wait_until(
        lambda: stub.Status(pb.StatusRequest(), timeout=5).workers[0].alive,
        what="the killed worker replaced",
    )
    status = stub.Status(pb.StatusRequest(), timeout=5)
    assert status.totals.rejected == 1 and status.totals.cancelled == 2
    unknown = pb.CancelRequest(db_root=root, compaction_id="nope")
    assert not stub.Cancel(unknown, timeout=5).cancelled


def test_deadline_stops_the_work_and_deletes_partial_outputs(start_service) -> None:
    running = start_service(compaction_fn=blocking_compaction)
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=1, entries=10))
    stub = running.stub()
    with pytest.raises(grpc.RpcError) as error:
        stub.Compact(_request(spec), timeout=1.5)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: not _partial_outputs(root, spec), what="partial outputs deleted")
    wait_until(
        lambda: stub.Status(pb.StatusRequest(), timeout=5).totals.cancelled == 1,
        what="the work stopped",
    )
    assert not stub.Status(pb.StatusRequest(), timeout=5).running


def _out_of_range(low: float, high: float) -> list[float]:
    if isinstance(high, float):
        return [low - 1, high * 10, math.nan, math.inf]
    return [low - 1, high + 1]


def test_numbers_out_of_range_get_invalid_argument_naming_field_and_range(start_service) -> None:
    running = start_service()
    root = f"{running.root}/db"
    good = spec_to_proto(make_spec(root, write_tables(root, tables=1, entries=10)))
    good.ttl_cutoff_ms = 1
    good.inputs[0].tables[0].min_expiry_ms = 1
    stub = running.stub()
    cases = [(f, v) for f, (low, high) in SPEC_RANGES.items() for v in _out_of_range(low, high)]
    cases.append(("table_options.bloom_bits_per_key", 2**32 - 1))  # tens of GB in a worker
    sent = 0
    for field, value in cases:
        m = pb.CompactionSpec()
        m.CopyFrom(good)
        try:
            where = set_spec_field(m, field, value)
        except ValueError:
            continue  # not representable on the wire (e.g. -1 in an unsigned field)
        sent += 1
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(pb.CompactRequest(spec=m), timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, value)
        assert f"'{where}'" in error.value.details() and range_text(field) in error.value.details()
    assert sent >= len(SPEC_RANGES) + 5
    assert stub.Status(pb.StatusRequest(), timeout=5).totals.accepted == 0
