"""RemoteCompactor against in-process services: remote results, fallbacks, the breaker, cancel."""

import logging
import time
from concurrent.futures import Future

from compaction_service.breaker import State
from compaction_service.client import FALLBACK_REASONS, ClientTls
from compaction_service.server import TlsConfig
from statebackend.lsm.compaction_job import CompactionSpec, run_compaction
from statebackend.lsm.db import LsmDB, LsmOptions
from tests.compaction_service.helpers import (
    blocking_compaction,
    lying_compaction,
    make_spec,
    read_outputs,
    table_names,
    wait_until,
    write_tables,
)
from tests.support.ports import free_port


def test_remote_result_and_log_lines(start_service, compactors, caplog) -> None:
    caplog.set_level(logging.INFO)
    running = start_service()
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=3, entries=2000))
    compactor = compactors([running.address])
    result = compactor.submit(spec, {}).result(timeout=30)
    assert read_outputs(root, result) == read_outputs(root, run_compaction(spec))
    assert all(t.creator.startswith("remote:") for t in result.outputs)
    s = compactor.stats
    assert (s.remote_ok, s.remote_failed, s.fallbacks) == (1, 0, 0)
    assert s.remote_input_bytes > 0 and s.remote_output_bytes > 0 and s.remote_cpu_seconds > 0
    assert s.request_bytes > 0 and s.response_bytes > 0 and s.local_cpu_seconds == 0
    assert f"invokeCompactionService compaction_id={spec.compaction_id}" in caplog.text
    assert "perform compaction on compaction-service side" in caplog.text


def test_unavailable_falls_back_then_the_breaker_keeps_it_local(tmp_path, compactors) -> None:
    root = f"file://{tmp_path}/db"
    inputs = write_tables(root, tables=2, entries=500)
    address = f"127.0.0.1:{free_port()}"
    compactor = compactors([address], failure_threshold=2)
    expected = read_outputs(root, run_compaction(make_spec(root, inputs)))
    for _ in range(3):
        result = compactor.submit(make_spec(root, inputs), {}).result(timeout=30)
        assert read_outputs(root, result) == expected
    s = compactor.stats
    assert (s.remote_ok, s.remote_failed, s.fallbacks) == (0, 2, 3)
    assert s.failures_by_code == {"UNAVAILABLE": 2} and s.local_cpu_seconds > 0
    assert s.fallbacks_by_reason == {
        **dict.fromkeys(FALLBACK_REASONS, 0),
        "unavailable": 2,
        "breaker_open": 1,
    }
    assert compactor.breaker(address).state is State.OPEN


def test_breaker_returns_to_remote_when_the_service_is_back(
    start_service, compactors, tmp_path
) -> None:
    port = free_port()
    compactor = compactors([f"127.0.0.1:{port}"], failure_threshold=1, backoff_s=0.5)
    root = f"file://{tmp_path}/allowed/db"
    inputs = write_tables(root, tables=2, entries=300)
    assert compactor.submit(make_spec(root, inputs), {}).result(timeout=30).outputs
    breaker = compactor.breaker(f"127.0.0.1:{port}")
    assert breaker.state is State.OPEN and compactor.stats.fallbacks == 1

    start_service(port=port)
    back = time.monotonic()

    def remote_again() -> bool:
        compactor.submit(make_spec(root, inputs), {}).result(timeout=30)
        return compactor.stats.remote_ok > 0

    wait_until(remote_again, what="compactions go remote again")
    assert time.monotonic() - back < 0.5 + 3.0  # the back-off, then one health probe
    assert breaker.state is State.CLOSED and compactor.stats.remote_failed == 1


def test_other_endpoints_are_tried_before_local(start_service, compactors) -> None:
    running = start_service()
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=2, entries=500))
    compactor = compactors([f"127.0.0.1:{free_port()}", running.address])
    for _ in range(2):  # whichever endpoint comes first, the live one answers
        assert compactor.submit(spec, {}).result(timeout=30).outputs
    assert compactor.stats.remote_ok == 2 and compactor.stats.fallbacks == 0


def test_full_queue_falls_back_at_once_and_cancel_stops_remote_work(
    start_service, compactors
) -> None:
    running = start_service(compaction_fn=blocking_compaction, queue_capacity=1)
    root = f"{running.root}/db"
    inputs = write_tables(root, tables=1, entries=100)
    compactor = compactors([running.address], deadline_s=120)
    first = compactor.submit(make_spec(root, inputs), {})
    wait_until(lambda: any("partial" in n for n in table_names(root)), what="first started")
    second = compactor.submit(make_spec(root, inputs), {})
    status = running.service.server.dispatcher.scheduler
    wait_until(lambda: status.queued == 1, what="second queued")

    started = time.monotonic()
    third = compactor.submit(make_spec(root, inputs), {}).result(timeout=30)
    assert time.monotonic() - started < 10  # far below the 120 s deadline
    assert third.outputs and compactor.stats.failures_by_code == {"RESOURCE_EXHAUSTED": 1}
    assert compactor.stats.fallbacks_by_reason["resource_exhausted"] == 1
    assert all(t.creator.startswith("compaction:") for t in third.outputs)  # ran locally

    assert first.cancel() and second.cancel()  # the DB abandons them
    wait_until(lambda: not any("partial" in n for n in table_names(root)), what="cleanup")
    wait_until(lambda: running.service.server.dispatcher.totals.cancelled == 2, what="stopped")
    assert table_names(root) == {t.name for t in inputs} | {t.name for t in third.outputs}


def test_deadline_falls_back_and_the_remote_run_leaves_nothing(start_service, compactors) -> None:
    running = start_service(compaction_fn=blocking_compaction)
    root = f"{running.root}/db"
    inputs = write_tables(root, tables=1, entries=100)
    compactor = compactors([running.address], deadline_s=1.0)
    spec = make_spec(root, inputs)
    result = compactor.submit(spec, {}).result(timeout=30)
    assert compactor.stats.failures_by_code == {"DEADLINE_EXCEEDED": 1}
    assert compactor.stats.fallbacks == compactor.stats.fallbacks_by_reason["deadline"] == 1
    wait_until(lambda: running.service.server.dispatcher.totals.cancelled == 1, what="stopped")
    wait_until(
        lambda: table_names(root) == {t.name for t in inputs} | {t.name for t in result.outputs},
        what="the remote run's partial outputs deleted",
    )


def test_a_bad_result_is_discarded_and_run_locally(start_service, compactors) -> None:
    running = start_service(compaction_fn=lying_compaction)
    root = f"{running.root}/db"
    inputs = write_tables(root, tables=2, entries=500)
    compactor = compactors([running.address])
    result = compactor.submit(make_spec(root, inputs), {}).result(timeout=30)
    assert compactor.stats.failures_by_code == {"BAD_RESULT": 1}
    assert compactor.stats.fallbacks_by_reason["invalid_result"] == 1
    assert table_names(root) == {t.name for t in inputs} | {t.name for t in result.outputs}


def test_in_process_databases_compact_locally(compactors) -> None:
    root = "memory://client-test/db"
    spec = make_spec(root, write_tables(root, tables=2, entries=100))
    compactor = compactors([f"127.0.0.1:{free_port()}"])
    assert compactor.submit(spec, {}).result(timeout=30).outputs
    s = compactor.stats
    assert (s.remote_ok, s.remote_failed, s.fallbacks) == (0, 0, 0)


def test_an_lsm_db_compacts_through_the_service(start_service, compactors) -> None:
    running = start_service(workers=2)
    compactor = compactors([running.address])
    options = LsmOptions(
        memtable_bytes=32 << 10, l0_compaction_trigger=2, gc_grace_s=0, manifest_retention=1
    )
    db = LsmDB(f"{running.root}/db", options, compactor=compactor)
    model: dict[bytes, bytes] = {}
    try:
        for i in range(6000):
            key = f"k{i * 7919 % 2000:05d}".encode()
            if i % 11 == 0:
                db.delete(key)
                model.pop(key, None)
            else:
                db.put(key, b"v%d" % i)
                model[key] = b"v%d" % i
        db.flush()
        db.wait_idle()
        assert dict(db.scan(None, None)) == model
        assert db.compactions_installed > 0
        assert compactor.stats.remote_ok == db.compactions_installed
        db.collect_garbage()
        assert table_names(f"{running.root}/db") == db.version.names()
    finally:
        db.close()


class ManualCompactor:
    """A local compactor whose results the test delivers by hand, whenever it wants."""

    def __init__(self) -> None:
        self.calls: list[tuple[CompactionSpec, Future]] = []

    def submit(self, spec: CompactionSpec, storage_options) -> Future:
        future: Future = Future()
        self.calls.append((spec, future))
        return future

    def close(self) -> None:
        pass


def test_a_result_after_the_caller_gave_up_is_deleted(tmp_path, compactors) -> None:
    root = f"file://{tmp_path}/db"
    inputs = write_tables(root, tables=2, entries=300)
    local = ManualCompactor()
    compactor = compactors([f"127.0.0.1:{free_port()}"], local=local)
    outer = compactor.submit(make_spec(root, inputs), {})
    wait_until(lambda: local.calls, what="the fallback started")
    assert outer.cancel()  # the DB timed the compaction out
    spec, future = local.calls[0]
    future.set_result(run_compaction(spec))  # ... and then the local run finishes
    assert table_names(root) == {t.name for t in inputs}


def test_tls_and_token_from_the_client(start_service, compactors, tls_files) -> None:
    t = tls_files
    running = start_service(
        token="tok", tls=TlsConfig(str(t.server_cert), str(t.server_key), str(t.ca))
    )
    root = f"{running.root}/db"
    spec = make_spec(root, write_tables(root, tables=2, entries=300))
    tls = ClientTls(str(t.ca), str(t.client_cert), str(t.client_key))
    good = compactors([running.address], token="tok", tls=tls)
    assert good.submit(spec, {}).result(timeout=30).outputs and good.stats.remote_ok == 1
    no_cert = compactors([running.address], token="tok", tls=ClientTls(str(t.ca)))
    assert no_cert.submit(spec, {}).result(timeout=30).outputs
    assert no_cert.stats.failures_by_code == {"UNAVAILABLE": 1}
    no_token = compactors([running.address], tls=tls)
    assert no_token.submit(spec, {}).result(timeout=30).outputs
    assert no_token.stats.failures_by_code == {"UNAUTHENTICATED": 1}
    assert no_token.stats.fallbacks_by_reason["other"] == 1


def test_late_remote_results_are_never_installed(start_service, compactors) -> None:
    """The remote compaction outlives the client's deadline: the DB installs the local run's
    outputs only, and the remote run's outputs disappear."""
    running = start_service(compaction_fn=blocking_compaction)
    compactor = compactors([running.address], deadline_s=0.5, backoff_s=60)
    options = LsmOptions(
        memtable_bytes=16 << 10, l0_compaction_trigger=2, gc_grace_s=0, manifest_retention=1
    )
    db_root = f"{running.root}/db"
    db = LsmDB(db_root, options, compactor=compactor)
    model: dict[bytes, bytes] = {}
    try:
        i = 0
        while db.compactions_installed < 2:
            key = b"k%05d" % (i * 7919 % 3000)
            db.put(key, b"v%d" % i)
            model[key] = b"v%d" % i
            i += 1
        db.flush()
        db.wait_idle()
        assert dict(db.scan(None, None)) == model
        creators = {t.creator.split(":")[0] for _, t in db.version.tables()}
        assert "remote" not in creators
        assert compactor.stats.failures_by_code.get("DEADLINE_EXCEEDED", 0) >= 1
        wait_until(
            lambda: (
                running.service.server.dispatcher.totals.cancelled == compactor.stats.remote_failed
            ),
            what="the service stopped every timed-out compaction",
        )
        db.collect_garbage()
        assert table_names(db_root) == db.version.names()
    finally:
        db.close()


def test_s3_database_with_the_services_own_storage_options(
    s3_bucket, start_service, compactors
) -> None:
    options = s3_bucket.storage_options
    running = start_service(allowed_roots=(s3_bucket.url,), storage_options=options)
    root = s3_bucket.path("job", "db")
    spec = make_spec(root, write_tables(root, tables=2, entries=500, storage_options=options))
    compactor = compactors([running.address])
    result = compactor.submit(spec, options).result(timeout=60)
    assert compactor.stats.remote_ok == 1
    assert read_outputs(root, result, options) == read_outputs(
        root, run_compaction(spec, options), options
    )
