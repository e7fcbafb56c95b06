"""`streamlet compaction-service`: run the service in the foreground until SIGTERM or SIGINT.

`streamlet/cli.py` parses the command line and calls `serve`; this module turns the options into
a `ServiceConfig` (reading the token, TLS files and storage options from files, so no secret is
on the command line) and runs the server. It logs one line when it is ready:
`compaction service listening on HOST:PORT ...` (PORT is the bound port, also for --port 0).

The first SIGTERM or SIGINT drains the service (`CompactionServer.drain`: NOT_SERVING, new calls
refused with UNAVAILABLE, running calls get `--drain-grace` seconds), then it stops; a second
signal stops it at once.
"""

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from compaction_service.scheduler import POLICIES
from compaction_service.security import read_token
from compaction_service.server import CompactionServer, ServiceConfig, TlsConfig

DRAIN_GRACE_S = 30.0


def build_config(
    *,
    port: int,
    allowed_roots: list[str],
    host: str = "127.0.0.1",
    workers: int = 2,
    policy: str = "round_robin",
    queue_size: int = 64,
    token_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    storage_options_file: str | None = None,
) -> ServiceConfig:
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls_client_ca is not None and tls_cert is None:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {sorted(POLICIES)}")
    storage_options = (
        json.loads(Path(storage_options_file).read_text()) if storage_options_file else {}
    )
    if not isinstance(storage_options, dict):
        raise ValueError(f"{storage_options_file} must hold a JSON object")
    return ServiceConfig(
        allowed_roots=tuple(allowed_roots),
        host=host,
        port=port,
        workers=workers,
        policy=policy,
        queue_capacity=queue_size,
        storage_options=storage_options,
        token=read_token(token_file) if token_file else None,
        tls=TlsConfig(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None,
    )


def run(config: ServiceConfig, drain_grace_s: float = DRAIN_GRACE_S) -> None:
    """Serve `config` in the foreground until SIGTERM or SIGINT (which drain it first)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    asyncio.run(_serve(config, drain_grace_s))


async def _serve(config: ServiceConfig, drain_grace_s: float) -> None:
    server = CompactionServer(config)
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, signalled.set)
    await server.start()  # logs "compaction service listening on HOST:PORT ..."
    try:
        await signalled.wait()
        signalled.clear()
        draining = asyncio.create_task(server.drain(drain_grace_s))
        again = asyncio.create_task(signalled.wait())
        await asyncio.wait([draining, again], return_when=asyncio.FIRST_COMPLETED)
        for task in (draining, again):
            task.cancel()
        await asyncio.gather(draining, again, return_exceptions=True)
    finally:
        await server.stop(0)


def serve(drain_grace: float = DRAIN_GRACE_S, **options: Any) -> int:
    """Run the service with `build_config(**options)` until a signal stops it; the first signal
    gives the running calls `drain_grace` seconds."""
    try:
        if drain_grace < 0:
            raise ValueError(f"--drain-grace must not be negative, got {drain_grace}")
        config = build_config(**options)
    except (OSError, ValueError) as e:
        print(f"streamlet compaction-service: {e}", file=sys.stderr)
        return 2
    run(config, drain_grace)
    return 0
