"""What the compaction service lets a request touch, and who may send one.

- `RootGuard`: the service reads and writes only below its allowed roots. A spec's `db_root`, and
  the root of every input table that names one (a table of another DB, shared after a rescale),
  must normalise (with fsspec's own URL parsing) to a path equal to or below an allowed root of
  the same protocol, with no `..` component and no chained (`a::b`) URL; the table names and
  the output prefix it implies must be plain file names. A protocol that fsspec does not know,
  or whose driver is not installed, is refused like any other location outside the roots. On a
  local file system the comparison is between real paths (symbolic links resolved, the roots'
  too): the `db_root`, its `tables` folder (where outputs are written) and every input table must
  resolve inside an allowed root, so a link that leaves the root is refused. `confine` returns
  the spec with its `db_root` and its input tables' roots replaced by those real paths; the
  servicer confines a request before admitting it, and the worker confines its task again right
  before opening any file, so a link swapped in while the task waited in the queue is refused
  too. Outputs always go to the spec's own `db_root`. Anything else is `AccessDenied`.
- `TokenInterceptor`: when a token is configured, every call except health checks must carry
  `authorization: Bearer <token>` (compared in constant time), else UNAUTHENTICATED.
- `UndecodableRequests`: a request message that does not decode is answered INVALID_ARGUMENT and
  logged as one line, at most `limit` lines per interval (`RateLimitedLog`), where grpc would
  answer UNKNOWN and log a full traceback per request.
- `server_credentials`: TLS, server-only or mutual (a client CA makes client certificates
  mandatory).
"""

import hmac
import inspect
import logging
import os
import posixpath
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import fsspec
import grpc
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from statebackend.lsm.compaction_job import CompactionSpec
from statebackend.lsm.files import is_plain_name, table_path, tables_dir
from statebackend.lsm.meta import TableMeta

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
AUTH_HEADER = "authorization"


class AccessDenied(Exception):
    """A request names a location outside the allowed roots (answered with PERMISSION_DENIED)."""


@dataclass(frozen=True)
class _Location:
    protocol: str  # fsspec's canonical name, e.g. "file", "s3"
    path: str  # absolute, normalised; on a local file system the real path (links resolved)
    local: bool


def _locate(url: str) -> _Location:
    """Where `url` points; AccessDenied if it is unsafe or its protocol is unusable."""
    if "::" in url:
        raise AccessDenied(f"chained URLs are not allowed: {url!r}")
    if "\x00" in url:
        raise AccessDenied(f"a NUL character is not allowed in {url!r}")
    protocol, path = split_protocol(url)
    if ".." in path.replace("\\", "/").split("/"):
        raise AccessDenied(f"'..' is not allowed in {url!r}")
    try:
        fs_class = fsspec.get_filesystem_class(protocol or "file")
    except ValueError as e:
        raise AccessDenied(f"unknown protocol in {url!r}") from e
    except ImportError as e:  # a protocol fsspec knows, but whose driver is not installed
        raise AccessDenied(f"no file system driver for {protocol!r} is installed ({e})") from e
    canonical = fs_class.protocol if isinstance(fs_class.protocol, str) else fs_class.protocol[0]
    stripped = fs_class._strip_protocol(url)  # fsspec's own normalisation (e.g. file: absolute)
    normalised = "/" + posixpath.normpath("/" + stripped).strip("/")
    if issubclass(fs_class, LocalFileSystem):
        return _Location(canonical, os.path.realpath(normalised), True)
    return _Location(canonical, normalised, False)


def _plain_name(name: str, what: str) -> None:
    if not is_plain_name(name):
        raise AccessDenied(f"{what} {name!r} is not a plain file name")


class RootGuard:
    """Checks locations against the allowed roots; immutable after construction."""

    def __init__(self, allowed_roots: Iterable[str]) -> None:
        roots = []
        for root in allowed_roots:
            try:
                roots.append(_locate(root))
            except AccessDenied as e:
                raise ValueError(f"allowed root {root!r} is not usable: {e}") from e
        self.roots = tuple(roots)
        if not self.roots:
            raise ValueError("at least one allowed root is required")

    def _inside(self, location: _Location) -> bool:
        path = location.path
        return any(
            location.protocol == root.protocol
            and (path == root.path or path.startswith(root.path.rstrip("/") + "/"))
            for root in self.roots
        )

    def _allowed(self, url: str) -> _Location:
        location = _locate(url)
        if not self._inside(location):
            raise AccessDenied(f"{url!r} is outside the allowed roots")
        return location

    def check_url(self, url: str) -> None:
        self._allowed(url)

    def _check_real(self, path: str, what: str) -> None:
        real = os.path.realpath(path)
        if not self._inside(_Location(LocalFileSystem.protocol[0], real, True)):
            raise AccessDenied(f"{what} {path!r} resolves to {real!r}, outside the allowed roots")

    def confine(self, spec: CompactionSpec) -> CompactionSpec:
        """`spec` once every file it reads (in `<root or db_root>/tables/`) or writes (in
        `<db_root>/tables/`) is known to lie below an allowed root; on a local file system with
        `db_root` and every input's root as their real paths."""
        for compaction_input in spec.inputs:
            for table in compaction_input.tables:
                _plain_name(table.name, "input table")
        _plain_name(spec.output_prefix, "output prefix")
        location = self._allowed(spec.db_root)
        roots = {t.root: self._allowed(t.root) for i in spec.inputs for t in i.tables if t.root}
        if location.local:
            self._check_real(tables_dir(location.path), "the tables folder")  # outputs go there
        inputs = tuple(
            replace(
                i,
                tables=tuple(self._confine_table(t, roots.get(t.root, location)) for t in i.tables),
            )
            for i in spec.inputs
        )
        if not location.local:
            return replace(spec, inputs=inputs)
        return replace(spec, db_root=f"file://{location.path}", inputs=inputs)

    def _confine_table(self, table: TableMeta, location: _Location) -> TableMeta:
        """An input table, its file checked to resolve inside the roots on a local file system
        (where a table of another root gets that root's real path)."""
        if not location.local:
            return table
        self._check_real(table_path(location.path, table.name), "input table")
        return replace(table, root=f"file://{location.path}") if table.root else table


_SHAPES = {  # (request_streaming, response_streaming) -> the handler's behaviour attribute
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def _shape(handler: grpc.RpcMethodHandler) -> str:
    return _SHAPES[(handler.request_streaming, handler.response_streaming)]


def _make_handler(
    shape: str,
    behavior: Callable[..., Any],
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    factory = getattr(grpc, f"{shape}_rpc_method_handler")
    return factory(
        behavior,
        request_deserializer=request_deserializer,
        response_serializer=response_serializer,
    )


def _deny_handler(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        # A coroutine serves every shape: grpc awaits it, and abort() always raises.
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    return _make_handler(_shape(handler), deny)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every method but the health service's."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the bearer token must not be empty")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        sent = dict(details.invocation_metadata or ()).get(AUTH_HEADER, "")
        sent_bytes = sent.encode() if isinstance(sent, str) else sent
        if hmac.compare_digest(sent_bytes, self._expected):
            return handler
        return _deny_handler(handler, "missing or wrong bearer token")


class RateLimitedLog:
    """Logs at most `limit` lines per `interval_s` seconds; the next line logged after some were
    dropped says how many. Used from one event loop (not thread-safe)."""

    def __init__(
        self,
        logger: logging.Logger,
        limit: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._limit = limit
        self._interval_s = interval_s
        self._clock = clock
        self._window_start = clock()
        self._logged = 0
        self.suppressed = 0  # lines dropped since the last line logged

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._window_start >= self._interval_s:
            self._window_start, self._logged = now, 0
        if self._logged >= self._limit:
            self.suppressed += 1
            return
        self._logged += 1
        if self.suppressed:
            message, args = f"{message} (%d similar lines suppressed)", (*args, self.suppressed)
            self.suppressed = 0
        self._logger.warning(message, *args)


class _Undecodable:
    """What a request deserializer returns instead of raising."""

    def __init__(self, error: Exception) -> None:
        self.error = " ".join(f"{type(error).__name__}: {error}".split())  # one line


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as e:  # noqa: BLE001 - answered INVALID_ARGUMENT by the handler
            return _Undecodable(e)

    return deserialize


Prepare = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _prepared(behavior: Callable[..., Any], prepare: Prepare) -> Callable[..., Any]:
    """`behavior` with its request (or request iterator) passed through `prepare` first; of the
    same kind (coroutine or async generator function), which is what grpc dispatches on."""
    if inspect.isasyncgenfunction(behavior):

        async def generator(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(await prepare(request, context), context):
                yield response

        return generator

    async def coroutine(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(await prepare(request, context), context)

    return coroutine


class UndecodableRequests(grpc.aio.ServerInterceptor):
    """Answers a request message that does not decode with INVALID_ARGUMENT and one log line
    (rate-limited by `log`), instead of grpc's UNKNOWN and a traceback per request."""

    def __init__(self, log: RateLimitedLog) -> None:
        self._log = log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        shape = _shape(handler)
        behavior = getattr(handler, shape)
        if not (inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)):
            return handler  # a synchronous behaviour (none in this service): left as it is
        method = details.method

        async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                self._log.warning(
                    "refused an undecodable %s request from %s: %s",
                    method,
                    context.peer(),
                    request.error,
                )
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"undecodable request: {request.error}"
                )
            return request

        async def check_each(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    yield await check(request, context)

            return checked()

        return _make_handler(
            shape,
            _prepared(behavior, check_each if handler.request_streaming else check),
            _tolerant(handler.request_deserializer),
            handler.response_serializer,
        )


def read_token(path: str | Path) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def server_credentials(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca_file`, clients must present a certificate it signed."""
    client_ca = Path(client_ca_file).read_bytes() if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(Path(key_file).read_bytes(), Path(cert_file).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
