"""One HTTP event stream after its response head (protocol §12): the connection's transport is
handed from the HTTP protocol to a `StreamSocket` (hub/http_protocol.py `hand_off`), as a
WebSocket's is after its upgrade, and the socket is its `Connection`'s `Outlet`. What the
connection writes goes straight to the transport as HTTP chunks, from the broker's callback;
an idle stream holds no task, no request and no parser: the socket, its connection and their
timers (the ping and the token's expiry), as a `/ws` socket does.

The response head and the refusals before it (401, 422, 429, 503) stay with the ASGI app
(hub/event_stream.py), so they keep the contract's error shape, the middleware and the access
log. The stream ends with an `error` event and the last chunk, then the connection is closed
(the head said `connection: close`); a peer that does not take that within the API's close
timeout is dropped.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hub.connection import STREAM, Connection, ConnectionEnded, SlowConsumer
from hub.http_protocol import CONTROL, BoundedHeadProtocol
from hub.socket_queue import WriteFlow
from hub.sse import HEADERS, PING, end_message, ending

if TYPE_CHECKING:
    from hub.event_stream import EventStreamApi

LAST_CHUNK = b"0\r\n\r\n"


class StreamSocket(WriteFlow):
    """One stream from its first event to its close; also its connection's `Outlet`."""

    __slots__ = ("_api", "_chunked", "_connection", "_ending", "_id_prefix", "_server_connections",
                 "_timer")

    def __init__(self, api: EventStreamApi) -> None:
        self._api = api
        self._id_prefix = b"id: "
        self._connection: Connection | None = None
        self._transport: asyncio.Transport | None = None
        self._server_connections: set[Any] | None = None
        self._chunked = True
        self._timer: asyncio.TimerHandle | int | None = None  # int: a keepalive bucket
        self._writable: asyncio.Future[None] | None = None
        self._ending: tuple[str, str] | None = None  # ended before the hand-off: said after it

    def attach(self, connection: Connection, id_prefix: bytes) -> None:
        """The connection this socket writes for, and `id: <epoch>:`, written before each
        event's own bytes."""
        self._connection = connection
        self._id_prefix = id_prefix

    def start(self, server_connections: set[Any], chunked: bool, welcome: bytes, after: int,
              replay_to: int | None) -> None:
        """After the hand-off: the welcome event, then events after `after` (replayed from the
        store up to `replay_to` first)."""
        connection = self._connection
        assert connection is not None
        assert self._transport is not None
        self._server_connections = server_connections
        server_connections.add(self)  # asked to shutdown() at a graceful stop
        self._chunked = chunked
        self._send(welcome)
        if self._ending is not None:
            self._end(*self._ending)
            return
        self._timer = self._api.keepalive.add(self)
        connection.set_expiry(connection.expires_at, self._api.keepalive.expiry_horizon)
        connection.start_at(after, replay_to)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        pass  # the request had no body; nothing the peer sends now is read

    def eof_received(self) -> bool | None:
        return None  # the peer left: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._server_connections is not None:
            self._server_connections.discard(self)
        self._finish()
        self._cancel_timer()
        self.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: the stream says so and ends (clients resume elsewhere)."""
        self._end("server_restarting", "the server is restarting: reconnect and resume")

    # Outlet (hub.connection)

    def write(self, frame: bytes) -> None:
        prefix = self._id_prefix
        transport = self._transport
        assert transport is not None
        if self._chunked:
            transport.write(b"%x\r\n%s%s\r\n" % (len(prefix) + len(frame), prefix, frame))
        else:
            transport.write(prefix + frame)

    def write_signal(self, frame: bytes) -> None:
        self._send(frame)  # no id line: the client's Last-Event-ID stays an event's

    def ended(self, reason: ConnectionEnded) -> None:
        if isinstance(reason, SlowConsumer):
            self._api.metrics.slow_consumer_disconnects.labels(STREAM).inc()
        self._end(*ending(reason))

    # the rest

    def _send(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def keepalive(self) -> None:
        """Its turn on the process's `KeepaliveWheel` (hub/ws_keepalive.py): a comment line that
        keeps proxies from closing an idle stream, and a look at the token's expiry."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._connection is None:
            return
        self._send(PING)
        self._timer = self._api.keepalive.add(self)
        self._connection.watch_expiry(self._api.keepalive.expiry_horizon)

    def _end(self, code: str, detail: str) -> None:
        """The error event after whatever is unsent, the last chunk, and the close; the
        connection leaves the registry now."""
        transport = self._transport
        if transport is None or self._server_connections is None:  # not handed off yet
            if self._ending is None:
                self._ending = (code, detail)
            return
        if transport.is_closing():
            return
        self._api.metrics.stream_ends.labels(code).inc()
        self._finish()
        self._cancel_timer()
        self._send(end_message(code, detail))
        if self._chunked:
            transport.write(LAST_CHUNK)
        transport.close()  # once the peer has taken everything
        self._timer = asyncio.get_running_loop().call_later(self._api.close_timeout,
                                                            transport.abort)

    def _finish(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.stop()
            # not now: this can run inside the registry's loop over the user's connections
            asyncio.get_running_loop().call_soon(self._api.registry.unregister, connection)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        self._api.keepalive.cancel(self, timer)


class StreamStart(Response):
    """The stream's response on the hub's own HTTP protocol: the head through the app (its
    middleware sees the 200), then the connection handed to the `StreamSocket`; the request's
    task ends here."""

    def __init__(self, api: EventStreamApi, socket: StreamSocket, connection: Connection,
                 welcome: bytes, after: int, replay_to: int | None) -> None:  # nothing rendered
        self._api = api
        self._socket = socket
        self._connection = connection
        self._welcome = welcome
        self._from = (after, replay_to)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        control = scope.get(CONTROL)
        assert isinstance(control, BoundedHeadProtocol)
        handed, chunked = False, True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            chunked = control.response_chunked()
            handed = control.hand_off(self._socket)
        finally:
            if handed:
                self._socket.start(control.connections, chunked, self._welcome, *self._from)
                if control.shutting_down:  # the server's shutdown asked before the hand-off
                    self._socket.shutdown()
            else:  # the peer left (or the task was cancelled) before the hand-off
                self._connection.stop()
                self._api.registry.unregister(self._connection)
