"""The shared token: every REST call carries `Authorization: Bearer <cluster.token>`.

The job manager refuses to start without a token, answers 401 to a call without the right one
(compared in constant time; the answer says to set `STREAMLET_CLUSTER_TOKEN`), and serves the
dashboard's static files and `/healthz` without it (they hold no data; the page asks for the
token and sends it with every call it makes).
"""

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

PUBLIC_PREFIXES = ("/dashboard", "/healthz")
UNAUTHORIZED = (
    "unauthorized: send Authorization: Bearer <cluster.token>; set STREAMLET_CLUSTER_TOKEN "
    "(or cluster.token) to the cluster's token"
)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MissingToken(ValueError):
    """No token is configured."""


def require_token(token: str) -> str:
    if not token:
        raise MissingToken(
            "no cluster token: set cluster.token (better: the STREAMLET_CLUSTER_TOKEN environment "
            "variable) on the job manager, the task managers and every client"
        )
    return token


def bearer(token: str) -> dict[str, str]:
    """The header a client sends."""
    return {"Authorization": f"Bearer {token}"}


def token_middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = f"Bearer {require_token(token)}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/" or request.path.startswith(PUBLIC_PREFIXES):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": UNAUTHORIZED},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="streamlet"'},
            )
        return await handler(request)

    return check_token
