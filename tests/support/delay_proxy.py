"""A reverse HTTP proxy that delays read requests: the latency of object storage, in front of moto.

The proxy runs as a separate process (so that a process under test that blocks its own event loop
cannot stall it)::

    python -m tests.support.delay_proxy --target http://127.0.0.1:PORT --delay-ms 10 --port P

Every request is forwarded to the target as it is (method, path, query, headers, body, the Host
header included, so that signed S3 requests stay valid) and its answer returned as it is; a read
(GET or HEAD) first waits `--delay-ms`, concurrently with other requests. `GET /__delay_proxy__`
answers its figures as JSON: the reads it delayed and the most it had in flight at once;
`DELETE /__delay_proxy__` sets them to zero.

`DelayProxy(target_url, delay_ms)` starts and stops it from a test or a benchmark (a context
manager, like `S3Server`); `endpoint_url` is what clients use instead of the target's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import TracebackType

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from tests.support.ports import LOOPBACK
from tests.support.processes import ManagedProcess, start_server

STATS_PATH = "/__delay_proxy__"
READS = frozenset({"GET", "HEAD"})
# Headers of one hop, never forwarded (aiohttp sets its own framing).
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
)


class DelayProxy:
    """The proxy process; use as a context manager or call start() / stop()."""

    def __init__(self, target_url: str, delay_ms: float, *, log_dir: Path | None = None) -> None:
        self.target_url = target_url.rstrip("/")
        self.delay_ms = delay_ms
        self._log_dir = log_dir  # None: a temporary one, removed on stop()
        self._own_log_dir: Path | None = None
        self._process: ManagedProcess | None = None
        self._port: int | None = None

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the delay proxy is not started")
        return f"http://{LOOPBACK}:{self._port}"

    def start(self) -> DelayProxy:
        """Start the proxy and block until it answers."""
        if self._process is not None:
            raise RuntimeError("the delay proxy is already started")
        if self._log_dir is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="delay-proxy-"))
        log_dir = self._log_dir or self._own_log_dir

        def launch(port: int) -> ManagedProcess:
            command = [
                sys.executable, "-u", "-m", "tests.support.delay_proxy",
                "--target", self.target_url, "--delay-ms", str(self.delay_ms),
                "--port", str(port),
            ]  # fmt: skip
            return ManagedProcess(command, name=f"delay-proxy-{port}", log_dir=log_dir).start()

        try:
            self._process, self._port = start_server(launch, _probe)
        except BaseException:
            self.stop()
            raise
        return self

    def stats(self) -> dict[str, int]:
        """`{"reads": delayed reads so far, "max_in_flight": most reads in flight at once}`."""
        return _get_stats(self.endpoint_url)

    def reset_stats(self) -> None:
        """Count from zero again."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.endpoint_url + STATS_PATH, method="DELETE")
        with direct.open(request, timeout=5.0):
            pass

    def stop(self) -> None:
        """Kill the proxy and reap it (and remove its temporary log directory). Idempotent."""
        if self._process is not None:
            self._process.kill()
            self._process = None
            self._port = None
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None


def _get_stats(endpoint_url: str) -> dict[str, int]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(endpoint_url + STATS_PATH, timeout=5.0) as response:
        return json.loads(response.read())


def _probe(port: int) -> None:
    _get_stats(f"http://{LOOPBACK}:{port}")


class _Forwarder:
    """The proxy's request handler and figures."""

    def __init__(self, target: str, delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s
        self.reads = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.session: ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == STATS_PATH and request.method == "DELETE":
            self.reads = self.max_in_flight = 0
            return web.json_response({})
        if request.path == STATS_PATH:
            return web.json_response({"reads": self.reads, "max_in_flight": self.max_in_flight})
        body = await request.read()
        if request.method in READS:
            self.reads += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_s)
                return await self._forward(request, body)
            finally:
                self.in_flight -= 1
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self.session.request(
            request.method,
            self.target + request.rel_url.raw_path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=False,
        ) as answer:
            content = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
            if request.method == "HEAD":  # no body; its Content-Length is the object's
                return web.Response(status=answer.status, headers=out)
            return web.Response(status=answer.status, body=content, headers=out)


async def _serve(target: str, delay_ms: float, port: int) -> None:
    forwarder = _Forwarder(target, delay_ms / 1000)
    async with ClientSession(
        connector=TCPConnector(limit=0),
        timeout=ClientTimeout(total=120),
        skip_auto_headers=("Content-Type",),
    ) as session:
        forwarder.session = session
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", forwarder.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, port).start()
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.delay_proxy")
    parser.add_argument("--target", required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.target.rstrip("/"), args.delay_ms, args.port))


if __name__ == "__main__":
    main()
