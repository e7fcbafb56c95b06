"""The exchange port before the token: a task manager reads a hello of a few KiB at most, waits
a few seconds for it, and keeps a bounded number of connections waiting for one; a peer that
knows the token still gets through while attackers hold the bound."""

import asyncio
import socket
import struct
import time
from pathlib import Path

from streamlet.cluster.exchange import (
    HANDSHAKE_TIMEOUT_S,
    MAX_HANDSHAKES,
    ExchangeServer,
    RemoteInputChannel,
    RemoteOutputChannel,
)
from streamlet.elements import END_OF_INPUT, Record
from tests.cluster.harness import Cluster

CLAIMED = 48 << 20
MIB = 1 << 20


def _exchange_of(cluster: Cluster) -> tuple[int, tuple[str, int]]:
    """The pid and exchange address of a freshly started task manager."""
    tm = cluster.start_taskmanager(slots=1)
    _, answer = cluster.api("GET", "/api/v1/taskmanagers")
    (info,) = [m for m in answer["task_managers"] if m["id"] == tm]
    host, _, port = info["exchange_address"].rpartition(":")
    return cluster.task_managers[tm].pid, (host, int(port))  # type: ignore[return-value]


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def _is_closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_a_huge_hello_length_is_refused_without_reading_it(cluster: Cluster) -> None:
    pid, address = _exchange_of(cluster)
    peak = _peak_rss(pid)
    sent = 0
    started = time.monotonic()
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(struct.pack(">I", CLAIMED))  # no token, 48 MiB announced
        chunk = b"x" * MIB
        try:
            while sent < CLAIMED:
                sent += sock.send(chunk)
        except (ConnectionError, TimeoutError):
            pass
    assert sent < CLAIMED / 3, "the task manager kept reading the announced frame"
    assert time.monotonic() - started < 8
    line = _wait_line(cluster, "refused")
    assert "hello of 50331648 bytes" in line and "8192" in line, line
    assert _peak_rss(pid) - peak < 16 * MIB


def _wait_line(cluster: Cluster, marker: str) -> str:
    (process,) = cluster.task_managers.values()
    return process.wait_for_output(marker, timeout=10)


def test_idle_connections_are_bounded_and_time_out(cluster: Cluster) -> None:
    _, address = _exchange_of(cluster)
    attackers = [socket.create_connection(address, timeout=5) for _ in range(MAX_HANDSHAKES * 3)]
    try:
        deadline = time.monotonic() + 10
        while sum(not _is_closed(s) for s in attackers) > MAX_HANDSHAKES:
            assert time.monotonic() < deadline, "idle connections beyond the bound stay open"
            time.sleep(0.1)
        opened = time.monotonic()
        deadline = opened + HANDSHAKE_TIMEOUT_S + 10
        while not all(_is_closed(s) for s in attackers):
            assert time.monotonic() < deadline, "idle connections outlive the handshake timeout"
            time.sleep(0.1)
    finally:
        for sock in attackers:
            sock.close()
    (process,) = cluster.task_managers.values()
    refusals = [line for line in process.output().splitlines() if "refused" in line]
    assert 1 <= len(refusals) <= 3, refusals  # hundreds refused, a line or two logged
    assert "waiting for their hello" in refusals[0], refusals


async def test_a_peer_with_the_token_gets_through_while_attackers_hold_the_bound() -> None:
    server = ExchangeServer("127.0.0.1", "secret", handshake_timeout_s=30, max_handshakes=4)
    address = await server.start()
    host, _, port = address.rpartition(":")
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(12)]
    for _ in range(100):  # the server accepts them all, and closes all but the newest 4
        if sum(not reader.at_eof() for reader, _ in idle) <= 4:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("idle connections beyond the bound stay open")
    key = ("exec-1", 0, 0, 1)
    consumer = RemoteInputChannel(2)
    consumer.attach(asyncio.Event())
    server.register_input(key, consumer)
    producer = RemoteOutputChannel(address, "exec-1", key, "secret")
    await asyncio.wait_for(producer.put([Record("through", None), END_OF_INPUT]), 10)
    for _ in range(200):
        batch = consumer.poll()
        if batch is not None:
            break
        await asyncio.sleep(0.01)
    assert batch is not None and batch[0].value == "through"
    for _, writer in idle:
        writer.close()
    await server.stop()
