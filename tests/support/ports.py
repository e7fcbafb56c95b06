"""Loopback port helpers for test servers.

This module owns picking a free TCP port on 127.0.0.1 and waiting until something accepts
connections on a port. Picking a port and binding it later is inherently racy (another process
may take it in between); servers started by this package therefore retry on a new port when
their process exits before becoming ready.
"""

from __future__ import annotations

import socket
import time

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Return True if a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = LOOPBACK, timeout: float = 30.0) -> None:
    """Poll until host:port accepts TCP connections; raise TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not port_is_open(port, host):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout}s")
        time.sleep(0.05)
