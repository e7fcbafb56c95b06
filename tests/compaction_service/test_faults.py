"""Faults with real processes: a killed service, a restarted one, a full queue, bad clients.

The service runs as its own process (the `streamlet compaction-service` entry point, or
`tests.compaction_service.launch` when a test needs a compaction that blocks) and is SIGKILLed
with its whole process group, workers included.
"""

import random
import re
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest

from compaction_service.client import RemoteCompactor
from compaction_service.convert import spec_to_proto
from compaction_service.proto import compaction_pb2 as pb
from compaction_service.proto import compaction_pb2_grpc as pb_grpc
from statebackend.lsm.db import LsmDB, LsmOptions
from tests.compaction_service.helpers import make_spec, table_names, wait_until, write_tables
from tests.support.ports import free_port

READY = re.compile(r"compaction service listening on 127\.0\.0\.1:(\d+)")
PERFORM = "perform compaction on compaction-service side"


def _start_cli(process_runner, root: str, port: int, *extra: str):
    process = process_runner.python(
        module="streamlet.cli",
        args=[
            "compaction-service",
            "--port",
            str(port),
            "--allowed-root",
            root,
            "--workers",
            "1",
            *extra,
        ],
        name="compaction-service",
    )
    return process, int(READY.search(process.wait_for_output(READY)).group(1))


def _start_blocking(process_runner, root: str, queue_size: int):
    process = process_runner.python(
        module="tests.compaction_service.launch",
        args=[root, "blocking_compaction", str(queue_size)],
        name="blocking-service",
    )
    return process, int(READY.search(process.wait_for_output(READY)).group(1))


def test_sigkill_mid_compaction_under_writes(process_runner, tmp_path: Path) -> None:
    root = f"file://{tmp_path}/data"
    service, port = _start_blocking(process_runner, root, queue_size=8)
    compactor = RemoteCompactor(
        [f"127.0.0.1:{port}"], deadline_s=60, failure_threshold=1, backoff_s=60
    )
    options = LsmOptions(
        memtable_bytes=16 << 10, l0_compaction_trigger=2, gc_grace_s=0, manifest_retention=1
    )
    db = LsmDB(f"{root}/db", options, compactor=compactor)
    model: dict[bytes, bytes] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        rng = random.Random(7)
        try:
            i = 0
            while not stop.is_set() or i < 3000:
                key = b"k%05d" % rng.randrange(3000)
                if rng.random() < 0.1:
                    db.delete(key)
                    model.pop(key, None)
                else:
                    db.put(key, b"v%d" % i)
                    model[key] = b"v%d" % i
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        service.wait_for_output(PERFORM)
        wait_until(
            lambda: any("partial" in n for n in table_names(f"{root}/db")),
            what="the remote compaction wrote a partial output",
        )
        service.kill()
        wait_until(lambda: db.compactions_installed >= 1, what="a fallback compaction installed")
        stop.set()
        writer.join()
        assert not errors
        db.flush()
        db.wait_idle()
        assert dict(db.scan(None, None)) == model
        assert compactor.stats.remote_ok == 0 and compactor.stats.fallbacks >= 1
        assert compactor.stats.failures_by_code.get("UNAVAILABLE", 0) >= 1
        db.collect_garbage()
        assert table_names(f"{root}/db") == db.version.names()  # the partial output is gone
    finally:
        stop.set()
        writer.join()
        db.close()
        compactor.close()


def test_restarted_service_gets_work_again_within_the_backoff(
    process_runner, tmp_path: Path
) -> None:
    root = f"file://{tmp_path}/data"
    db_root = f"{root}/db"
    inputs = write_tables(db_root, tables=2, entries=300)
    port = free_port()
    service, _ = _start_cli(process_runner, root, port)
    backoff = 1.0
    compactor = RemoteCompactor([f"127.0.0.1:{port}"], failure_threshold=1, backoff_s=backoff)
    try:
        compactor.submit(make_spec(db_root, inputs), {}).result(timeout=30)
        assert compactor.stats.remote_ok == 1
        service.kill()
        compactor.submit(make_spec(db_root, inputs), {}).result(timeout=30)
        assert compactor.stats.fallbacks == 1
        service.restart()
        service.wait_for_output(READY)
        back = time.monotonic()

        def remote_again() -> bool:
            compactor.submit(make_spec(db_root, inputs), {}).result(timeout=30)
            return compactor.stats.remote_ok == 2

        wait_until(remote_again, what="compactions go remote again")
        assert time.monotonic() - back < backoff + 3.0
    finally:
        compactor.close()


def test_full_queue_falls_back_without_waiting_for_the_deadline(
    process_runner, tmp_path: Path
) -> None:
    root = f"file://{tmp_path}/data"
    db_root = f"{root}/db"
    inputs = write_tables(db_root, tables=1, entries=100)
    service, port = _start_blocking(process_runner, root, queue_size=1)
    compactor = RemoteCompactor([f"127.0.0.1:{port}"], deadline_s=300)
    try:
        running = compactor.submit(make_spec(db_root, inputs), {})
        service.wait_for_output(PERFORM)
        queued = compactor.submit(make_spec(db_root, inputs), {})
        wait_until(lambda: service.output().count(PERFORM) == 2, what="the second one queued")
        started = time.monotonic()
        result = compactor.submit(make_spec(db_root, inputs), {}).result(timeout=60)
        assert time.monotonic() - started < 10.0  # not the 300 s deadline
        assert result.outputs and compactor.stats.failures_by_code == {"RESOURCE_EXHAUSTED": 1}
        assert running.cancel() and queued.cancel()
    finally:
        compactor.close()


def test_bad_clients_are_rejected_and_good_ones_still_served(
    process_runner, tmp_path: Path
) -> None:
    root = f"file://{tmp_path}/data"
    db_root = f"{root}/db"
    inputs = write_tables(db_root, tables=2, entries=300)
    outside = f"file://{tmp_path}/elsewhere/db"
    write_tables(outside, tables=1, entries=10)
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    service, port = _start_cli(process_runner, root, 0, "--token-file", str(token_file))
    address = f"127.0.0.1:{port}"
    stub = pb_grpc.CompactionServiceStub(grpc.insecure_channel(address))
    good = (("authorization", "Bearer t0ken"),)
    compactor = RemoteCompactor([address], token="t0ken")
    try:
        with pytest.raises(grpc.RpcError) as error:
            stub.Compact(
                pb.CompactRequest(spec=spec_to_proto(make_spec(db_root, inputs))),
                timeout=10,
                metadata=(("authorization", "Bearer guess"),),
            )
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for bad_root in (outside, f"{root}/../elsewhere/db", "s3://bucket/db"):
            with pytest.raises(grpc.RpcError) as error:
                stub.Compact(
                    pb.CompactRequest(spec=spec_to_proto(make_spec(bad_root, inputs))),
                    timeout=10,
                    metadata=good,
                )
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for junk in (random.Random(3).randbytes(4096), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(junk)
                sock.settimeout(5)
                while sock.recv(4096):  # the server answers what it can, then hangs up
                    pass
        result = compactor.submit(make_spec(db_root, inputs), {}).result(timeout=30)
        assert compactor.stats.remote_ok == 1 and result.outputs
        assert service.running
        assert set(table_names(outside)) and len(table_names(outside)) == 1
    finally:
        compactor.close()


@pytest.mark.timeout(120)  # far below the DB's compaction timeout: closing must not wait for it
def test_closing_a_db_cancels_its_remote_compaction(process_runner, tmp_path: Path) -> None:
    root = f"file://{tmp_path}/data"
    service, port = _start_blocking(process_runner, root, queue_size=8)
    compactor = RemoteCompactor([f"127.0.0.1:{port}"], deadline_s=300)
    options = LsmOptions(memtable_bytes=16 << 10, l0_compaction_trigger=2)
    db = LsmDB(f"{root}/db", options, compactor=compactor)
    try:
        i = 0
        while PERFORM not in service.output():
            db.put(b"k%06d" % i, b"v" * 100)
            i += 1
        wait_until(
            lambda: any("partial" in n for n in table_names(f"{root}/db")),
            what="the remote compaction wrote a partial output",
        )
        db.close()  # returns at once: the remote call is cancelled, not awaited
        wait_until(
            lambda: not any("partial" in n for n in table_names(f"{root}/db")),
            what="the service deleted the cancelled compaction's partial output",
        )
        assert compactor.stats.remote_ok == 0
    finally:
        db.close()
        compactor.close()
