"""The contract's error shape, `{"error": code, "detail": sentence}`, for every 4xx/5xx answer.

    ApiError                 raised by endpoints, rendered as is
     ├─ Invalid              422 `invalid`, with `fields` naming each bad field
     ├─ Unauthorized         401
     ├─ Forbidden            403
     ├─ NotFound             404
     ├─ RequestTimeout       408 `timeout`, a request head too slow (answered by hub.http_protocol)
     ├─ Conflict             409
     ├─ TooLarge             413
     │   └─ HeadersTooLarge  431 `too_large`, a request head too big (hub.http_protocol)
     ├─ UnsupportedMediaType 415
     ├─ RateLimited          429
     └─ Unavailable          503

Anything else that escapes an endpoint is logged with its traceback and answered with a bare
500 `internal`; the client never sees the trace. A client that goes away while its request is
read (starlette's `ClientDisconnect`) is nobody's error: counted as 499, answered to nobody.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from hub.responses import json_response

log = logging.getLogger("hub.errors")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before the answer


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class Invalid(ApiError):
    status, code = 422, "invalid"

    def __init__(self, fields: dict[str, str], detail: str | None = None) -> None:
        text = detail or "; ".join(f"{name}: {problem}" for name, problem in fields.items())
        super().__init__(text, extra={"fields": fields})


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, detail: str = "missing, expired or invalid access token") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class RequestTimeout(ApiError):
    status, code = 408, "timeout"


class Conflict(ApiError):
    status, code = 409, "conflict"


class TooLarge(ApiError):
    status, code = 413, "too_large"


class HeadersTooLarge(TooLarge):
    status = 431


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class Unavailable(ApiError):
    status, code = 503, "unavailable"


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 429: "rate_limited", 503: "unavailable",
}


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response(exc.body(), exc.status, headers=exc.headers)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no such resource: {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return json_response({"error": code, "detail": detail}, exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path. Starlette's 405 names only the
    methods of the first route that matched the path, and a path with one route per method
    (GET and POST /api/v1/chats) would then answer `Allow: POST` to a GET-able resource."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(request.url.path):
            methods |= route.methods
    return sorted(methods)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal", "detail": "internal server error"}, 500)


async def client_disconnect_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientDisconnect)
    log.debug("client left during %s %s", request.method, request.url.path)
    return Response(status_code=CLIENT_CLOSED_REQUEST)


# SQLSTATE classes of a database that is there but cannot serve now: connection exceptions,
# insufficient resources (too many clients), operator intervention (shutting down, starting up)
UNAVAILABLE_SQLSTATES = ("08", "53", "57")


def database_unavailable(exc: DBAPIError) -> bool:
    """Whether the database failed the request as a whole (it went away, restarts, or takes no
    more connections) rather than the request's statement failing: a retry may succeed."""
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or "")
    return exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)


async def database_error_handler(request: Request, exc: Exception) -> Response:
    """A database connection that died under a request (a restart, a failover, a killed
    backend) is 503: SQLAlchemy has already dropped every pooled connection of that
    generation, so the retry gets a fresh one. Connections are not pinged before each use
    (that costs a round trip per request), so this is how a restart shows. A database that
    refuses new connections for a while (too many clients, starting up) is 503 as well. Any
    other database error is a bug: 500."""
    assert isinstance(exc, DBAPIError)
    if not database_unavailable(exc):
        return await internal_error_handler(request, exc)
    log.warning("database unavailable during %s %s; answered 503", request.method, request.url.path)
    what = "the database connection was lost" if exc.connection_invalidated else "the database is unavailable"
    return await _retry_soon(request, f"{what}; retry")


async def unreachable_handler(request: Request, exc: Exception) -> Response:
    """A connection refused, reset or timed out below any client library's own errors (the
    database's pool opening a connection while PostgreSQL is down) is 503; any other OS error
    is a bug: 500."""
    if not isinstance(exc, ConnectionError | TimeoutError):
        return await internal_error_handler(request, exc)
    log.warning("a service was unreachable during %s %s (%s); answered 503", request.method,
                request.url.path, type(exc).__name__)
    return await _retry_soon(request, "a service the hub needs is unreachable; retry")


async def _retry_soon(request: Request, detail: str) -> Response:
    return await api_error_handler(request, Unavailable(detail, headers={"Retry-After": "1"}))
