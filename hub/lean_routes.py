"""A lean path past starlette's request cycle for the hottest calls (the publish API, §9).

Starlette's stack costs ~40 µs of CPU per request on the bench machine: its middleware, the
router trying each route's regular expression in turn, the Request, Headers and Response
objects. A lean route is found by its exact method and path before any of that; its handler
reads the headers and the body straight from the ASGI scope and `receive` and returns its
answer, sent as one start and one body message (one `send()` for both on the hub's own HTTP
protocol, `BoundedHeadProtocol.one_write`). Everything it raises is answered by the app's own
exception handlers, as starlette would (the contract's error shapes, 503 for a lost database,
500 logged), and every answer is counted in the same metric as the other routes'. The route
stays declared in starlette too (the OpenAPI document, 405 for other methods, and its endpoint
runs the same handler).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import nullcontext
from typing import Any, NamedTuple

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hub.http import MAX_BODY_BYTES, collect_body
from hub.http_protocol import CONTROL, BoundedHeadProtocol
from hub.metrics import Metrics

JSON_HEADERS = [(b"content-type", b"application/json")]


class Answer(NamedTuple):
    status: int
    body: bytes  # JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


class LeanRequest:
    """What a lean handler reads of its request: headers and body."""

    __slots__ = ("_receive", "_scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self._scope = scope
        self._receive = receive

    def header(self, name: bytes) -> str | None:
        """The first value of the header `name` (lower case), as starlette's `headers.get`."""
        for key, value in self._scope["headers"]:
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None

    async def body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The raw body; 413 over `limit` (`hub.http.read_body`)."""
        return await collect_body(self.header(b"content-length"), self._chunks(), limit)

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


LeanHandler = Callable[[LeanRequest], Awaitable[Answer]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


def as_response(answer: Answer) -> Response:
    """A lean handler's answer as a starlette response (for the route's declared endpoint)."""
    response = Response(answer.body, answer.status, media_type="application/json")
    response.raw_headers.extend(answer.headers)
    return response


class LeanRoutes:
    """ASGI middleware: requests for a lean route (`(method, path)`) go to its handler, every
    other request to `app`. Put it outermost among the app's middleware."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], LeanHandler],
                 handlers: Mapping[Any, ErrorHandler], metrics: Metrics) -> None:
        self.app = app
        self.routes = dict(routes)
        self.handlers = dict(handlers)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _route_path(scope) if scope["type"] == "http" else ""
        handler = self.routes.get((scope.get("method", ""), path))
        if handler is None:
            await self.app(scope, receive, send)
            return
        status = 500
        try:
            try:
                answer = await handler(LeanRequest(scope, receive))
            except Exception as exc:
                response = await self._handler_for(exc)(Request(scope, receive), exc)
                status = response.status_code
                await response(scope, receive, send)
                return
            status = answer.status
            control = scope.get(CONTROL)
            with control.one_write() if isinstance(control, BoundedHeadProtocol) else nullcontext():
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": [*JSON_HEADERS, (b"content-length", b"%d" % len(answer.body)),
                                        *answer.headers]})
                await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.metrics.http_requests.labels(path, scope["method"], str(status)).inc()

    def _handler_for(self, exc: Exception) -> ErrorHandler:
        for kind in type(exc).__mro__:
            found: ErrorHandler | None = self.handlers.get(kind)
            if found is not None:
                return found
        raise exc


def _route_path(scope: Scope) -> str:
    """The request's path within the app, as starlette's router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
