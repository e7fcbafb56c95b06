"""What the compaction service lets a request touch, and who may send one.

- `RootGuard`: the service reads and writes only below its allowed roots. A spec's `db_root` must
  normalise (with fsspec's own URL parsing) to a path equal to or below an allowed root of the
  same protocol, with no `..` component and no chained (`a::b`) URL; the table names and the
  output prefix it implies must be plain file names. Anything else is `AccessDenied`.
- `TokenInterceptor`: when a token is configured, every call except health checks must carry
  `authorization: Bearer <token>` (compared in constant time), else UNAUTHENTICATED.
- `server_credentials`: TLS, server-only or mutual (a client CA makes client certificates
  mandatory).
"""

import hmac
import posixpath
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import fsspec
import grpc
from fsspec.core import split_protocol

from statebackend.lsm.compaction_job import CompactionSpec

HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
AUTH_HEADER = "authorization"


class AccessDenied(Exception):
    """A request names a location outside the allowed roots (answered with PERMISSION_DENIED)."""


def _normalise(url: str) -> tuple[str, str]:
    """(canonical protocol, absolute normalised path) of `url`; AccessDenied if it is unsafe."""
    if "::" in url:
        raise AccessDenied(f"chained URLs are not allowed: {url!r}")
    protocol, path = split_protocol(url)
    if ".." in path.replace("\\", "/").split("/"):
        raise AccessDenied(f"'..' is not allowed in {url!r}")
    try:
        fs_class = fsspec.get_filesystem_class(protocol or "file")
    except ValueError as e:
        raise AccessDenied(f"unknown protocol in {url!r}") from e
    canonical = fs_class.protocol if isinstance(fs_class.protocol, str) else fs_class.protocol[0]
    stripped = fs_class._strip_protocol(url)  # fsspec's own normalisation (e.g. file: absolute)
    return canonical, "/" + posixpath.normpath("/" + stripped).strip("/")


def _plain_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise AccessDenied(f"{what} {name!r} is not a plain file name")


class RootGuard:
    """Checks locations against the allowed roots; immutable after construction."""

    def __init__(self, allowed_roots: Iterable[str]) -> None:
        self.roots = tuple(_normalise(root) for root in allowed_roots)
        if not self.roots:
            raise ValueError("at least one allowed root is required")

    def check_url(self, url: str) -> None:
        protocol, path = _normalise(url)
        for root_protocol, root_path in self.roots:
            if protocol == root_protocol and (
                path == root_path or path.startswith(root_path.rstrip("/") + "/")
            ):
                return
        raise AccessDenied(f"{url!r} is outside the allowed roots")

    def check_spec(self, spec: CompactionSpec) -> None:
        """Every file `spec` reads or writes lies in `<db_root>/tables/` below an allowed root."""
        self.check_url(spec.db_root)
        for compaction_input in spec.inputs:
            for table in compaction_input.tables:
                _plain_name(table.name, "input table")
        _plain_name(spec.output_prefix, "output prefix")


def _deny_handler(handler: grpc.RpcMethodHandler, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, details)
        yield  # makes this an async generator; abort() always raises

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


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
