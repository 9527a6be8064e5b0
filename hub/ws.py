"""The WebSocket endpoint `/ws` (protocol §4): the whole lifecycle of a connection in one place.

uvicorn parses the HTTP request and hands the upgraded socket to `HubSocket`, an asyncio
protocol (the server's `ws` class), so a socket costs a few objects and no task while it idles,
and an event's frame, encoded once for all its recipients, is written straight to each socket
from the broker's read callback.

Handshake (origin check) → first-frame auth (10 s) → register → welcome (+ replay on resume) →
client frames and events → close, unregistering at once. websockets' sans-I/O layer validates
the handshake and parses the client's frames; nothing else of a socket is kept per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import struct
import termios
from collections.abc import Coroutine
from typing import Any, cast

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from hub import streams
from hub.connection import (
    AuthEnded,
    Connection,
    ConnectionEnded,
    SlowConsumer,
    StreamGap,
    text_frame,
)
from hub.db import Database, rfc3339
from hub.identity import Authenticator, AuthError, Identity
from hub.metrics import Metrics
from hub.registry import Registry
from hub.settings import Settings, normalize_origin
from hub.streams import StoredEvent
from hub.ws_budget import FrameBudget

log = logging.getLogger("hub.ws")
_frames_log = logging.getLogger("hub.ws.frames")  # websockets' own per-connection messages
_frames_log.setLevel(logging.WARNING)

PATH = "/ws"
AUTH_FAILED, FORBIDDEN, RATE_LIMITED, SLOW_CONSUMER = 4001, 4003, 4008, 4009
TOO_BIG, INTERNAL, RESTARTING = 1009, 1011, 1012
CLOSE_TIMEOUT = 5.0
CLOSE_GRACE = 2.0  # a closing socket whose every byte the peer has acknowledged is dropped after this
PONG = text_frame(b'{"type":"pong"}')
BAD_FRAME = text_frame(orjson.dumps({
    "type": "error", "code": "bad_frame",
    "detail": "expected {\"type\": \"ping\"} or {\"type\": \"refresh\", \"token\": ...}",
}))

HANDSHAKE, AUTH, STARTING, OPEN, CLOSING, CLOSED = range(6)


class WebSocketApi:
    """What every socket of this process shares; `protocol` is uvicorn's `ws` factory."""

    def __init__(self, settings: Settings, db: Database, registry: Registry,
                 authenticator: Authenticator, metrics: Metrics) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.auth = authenticator
        self.metrics = metrics
        self.origins = frozenset(settings.allowed_origins)
        # a slow reader gets its close frame after what is already in its socket buffer: give
        # it as long as the keepalive gives a silent peer before dropping it
        self.close_timeout = max(CLOSE_TIMEOUT, 2 * settings.ws_ping_interval)

    def protocol(self, config: Any, server_state: Any, app_state: Any) -> HubSocket:
        """Called by uvicorn for each upgraded connection (its `ws` option)."""
        return HubSocket(self, server_state.connections)

    def origin_allowed(self, origin: str | None) -> bool:
        return not self.origins or origin is None or normalize_origin(origin) in self.origins

    async def read_events(self, user_id: int, after: int, limit: int,
                          up_to: int | None) -> list[StoredEvent]:
        async with self.db.readers.connect() as conn:
            return await streams.read(conn, user_id, after, limit, up_to)


class HubSocket(asyncio.Protocol):
    """One client socket from the upgrade to the close; also its connection's `Outlet`."""

    __slots__ = ("_api", "_budget", "_closing_since", "_connection", "_early", "_fragments",
                 "_pending_pong", "_proto", "_server_connections", "_state", "_tasks", "_timer",
                 "_transport", "_writable")

    def __init__(self, api: WebSocketApi, server_connections: set[Any]) -> None:
        self._api = api
        self._server_connections = server_connections
        self._transport: asyncio.Transport | None = None
        self._state = HANDSHAKE
        self._proto: Protocol | None = None
        self._connection: Connection | None = None
        self._budget: FrameBudget | None = None
        self._closing_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._pending_pong = False
        self._tasks: set[asyncio.Task[None]] | None = None
        self._early: list[tuple[Opcode, bytes]] | None = None
        self._fragments: tuple[Opcode, list[bytes]] | None = None
        self._writable: asyncio.Future[None] | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self._server_connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._state == HANDSHAKE:
            self._handshake(data)
            return
        proto, budget = self._proto, self._budget
        if proto is None or budget is None or self._state >= CLOSING:
            return  # a closing socket parses nothing more (its reading is paused too)
        admitted = budget.admit(data)
        if admitted:
            proto.receive_data(data if admitted == len(data) else data[:admitted])
        events = proto.events_received()
        self._flush()
        for frame in events:
            if self._state >= CLOSING:
                return
            if isinstance(frame, Frame):
                self._frame(frame)
        if admitted < len(data):
            if budget.too_fragmented:
                self._close(TOO_BIG, "a message in too many fragments")
            else:
                self._close(RATE_LIMITED, "too many frames")

    def eof_received(self) -> bool | None:
        if self._proto is not None:
            self._proto.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_connections.discard(self)
        if self._state < CLOSING:
            self._finish()
        self._state = CLOSED
        self._cancel_timer()
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close with 1012 (clients reconnect to another process)."""
        if self._state in (AUTH, STARTING, OPEN):
            self._close(RESTARTING, "server restarting", count=False)
        if self._transport is not None:
            self._transport.close()

    # Outlet (hub.connection)

    def write(self, frame: bytes) -> None:
        assert self._transport is not None
        self._transport.write(frame)

    def buffered(self) -> int:
        assert self._transport is not None
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        if self._writable is not None:
            await asyncio.shield(self._writable)

    def ended(self, reason: ConnectionEnded) -> None:
        if isinstance(reason, SlowConsumer):
            self._api.metrics.slow_consumer_disconnects.inc()
            self._close(SLOW_CONSUMER, str(reason))
        elif isinstance(reason, StreamGap):
            self._close(SLOW_CONSUMER, "missed events are no longer retained: reconnect")
        elif isinstance(reason, AuthEnded):
            self._close(AUTH_FAILED, str(reason))
        else:
            self._close(INTERNAL, "internal error")

    # the handshake

    def _handshake(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        api = self._api
        settings = api.settings
        server = ServerProtocol(max_size=settings.ws_max_message_bytes, logger=_frames_log)
        server.receive_data(data)
        request = next((event for event in server.events_received() if isinstance(event, Request)), None)
        if request is None:
            self._state = CLOSED
            transport.close()
            return
        origins = request.headers.get_all("Origin")
        if request.path.partition("?")[0] != PATH:
            response = server.reject(404, "Not Found\n")
        elif len(origins) > 1:
            response = server.reject(400, "Bad Request: more than one Origin header\n")
        elif not api.origin_allowed(origins[0] if origins else None):
            api.metrics.connections_rejected.labels("origin").inc()
            response = server.reject(403, "Forbidden: origin not allowed\n")
        else:
            response = server.accept(request)
        server.send_response(response)
        transport.write(b"".join(server.data_to_send()))
        if response.status_code != 101:
            self._state = CLOSED
            transport.close()
            return
        self._proto = Protocol(Side.SERVER, state=State.OPEN, max_size=settings.ws_max_message_bytes,
                               logger=_frames_log)
        self._budget = FrameBudget(settings.ws_rate_limit, settings.ws_rate_burst, settings.ws_max_fragments)
        self._state = AUTH
        self._timer = asyncio.get_running_loop().call_later(
            settings.ws_auth_timeout, self._close, AUTH_FAILED, "no auth frame within the time limit")

    # frames from the client

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.PONG:
            self._pending_pong = False
            return
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(opcode, bytes(frame.data))
            else:
                self._fragments = (opcode, [bytes(frame.data)])
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments[1].append(bytes(frame.data))  # as many as FrameBudget lets through
            if frame.fin:
                (opcode, parts), self._fragments = self._fragments, None
                self._message(opcode, b"".join(parts))

    def _message(self, opcode: Opcode, data: bytes) -> None:
        if self._state == OPEN:
            self._client_frame(opcode, data)
        elif self._state == AUTH:
            self._authenticate(opcode, data)
        elif self._state == STARTING:
            early = self._early
            if early is None:
                early = self._early = []
            if len(early) >= self._api.settings.ws_rate_burst:
                self._close(RATE_LIMITED, "too many frames")
                return
            early.append((opcode, data))

    def _parse(self, opcode: Opcode, data: bytes) -> Any:
        if opcode is Opcode.TEXT:
            try:
                data.decode()
            except UnicodeDecodeError:
                self._close(1007, "invalid UTF-8", count=False)
                return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None

    def _authenticate(self, opcode: Opcode, data: bytes) -> None:
        frame = self._parse(opcode, data)
        if self._state != AUTH:
            return
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            self._close(AUTH_FAILED, "the first frame must be {\"type\": \"auth\", \"token\": ...}")
            return
        token, last_id, epoch = frame.get("token"), frame.get("last_event_id"), frame.get("epoch")
        if not isinstance(token, str):
            self._close(AUTH_FAILED, "auth frame without a token")
            return
        if last_id is not None and (isinstance(last_id, bool) or not isinstance(last_id, int) or last_id < 0):
            self._close(AUTH_FAILED, "last_event_id must be a non-negative integer")
            return
        if epoch is not None and not isinstance(epoch, str):
            self._close(AUTH_FAILED, "epoch must be a string")
            return
        try:
            identity = self._api.auth.verify(token)  # the user's existence: its stream head, next
        except AuthError:
            self._close(AUTH_FAILED, "invalid or expired token")
            return
        self._cancel_timer()
        self._state = STARTING
        self._spawn(self._start(identity, last_id, epoch))

    async def _start(self, identity: Identity, resume_id: int | None, resume_epoch: str | None) -> None:
        api = self._api
        settings = api.settings
        connection = Connection(identity.user_id, identity.expires_at, self, api.read_events,
                                api.metrics, settings.ws_queue_max_messages, settings.ws_queue_max_bytes,
                                identity.session_id)
        self._connection = connection
        if not await api.registry.register(connection):
            self._close(RATE_LIMITED, "too many connections for this user")
            return
        head = await streams.read_head(api.db, identity.user_id)
        if self._state != STARTING:
            return
        if head is None:
            self._close(AUTH_FAILED, "user no longer exists")
            return
        recovered = (resume_id is not None and resume_epoch == head.epoch
                     and head.trimmed_id <= resume_id <= head.last_id)
        self.write(text_frame(orjson.dumps({
            "type": "welcome", "user_id": identity.user_id, "epoch": head.epoch,
            "last_event_id": head.last_id, "recovered": recovered,
        })))
        self._state = OPEN
        self._timer = asyncio.get_running_loop().call_later(settings.ws_ping_interval, self._keepalive)
        connection.set_expiry(identity.expires_at)
        if recovered:
            assert resume_id is not None
            connection.start_at(resume_id, replay_to=head.last_id)
        else:
            connection.start_at(head.last_id)
        early, self._early = self._early, None
        for opcode, data in early or ():
            if self._state != OPEN:
                break
            self._client_frame(opcode, data)

    def _client_frame(self, opcode: Opcode, data: bytes) -> None:
        frame = self._parse(opcode, data)
        if self._state != OPEN:
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ping":
            self.write(PONG)
        elif kind == "refresh" and isinstance(frame, dict):
            token = frame.get("token")
            if not isinstance(token, str):
                self._close(AUTH_FAILED, "refresh frame without a token")
                return
            self._spawn(self._refresh(token))
        else:
            self.write(BAD_FRAME)

    async def _refresh(self, token: str) -> None:
        connection = self._connection
        assert connection is not None
        try:
            identity = await self._api.auth.authenticate(token)
        except AuthError:
            self._close(AUTH_FAILED, "invalid or expired token")
            return
        if self._state != OPEN:
            return
        if identity.user_id != connection.user_id:
            self._close(FORBIDDEN, "token of another user")
            return
        connection.session_id = identity.session_id
        connection.set_expiry(identity.expires_at)
        self.write(text_frame(orjson.dumps({
            "type": "refreshed", "expires_at": rfc3339(_utc(connection.expires_at)),
        })))

    # keepalive, closing

    def _keepalive(self) -> None:
        proto = self._proto
        assert proto is not None
        if self._pending_pong:  # no pong within a whole interval
            proto.fail(INTERNAL, "keepalive ping timeout")  # a close frame, then EOF: _flush ends it
            self._flush()
            return
        self._pending_pong = True
        proto.send_ping(b"hub")
        self._flush()
        self._timer = asyncio.get_running_loop().call_later(self._api.settings.ws_ping_interval,
                                                            self._keepalive)

    def _close(self, code: int, reason: str, *, count: bool = True) -> None:
        """Send the close frame and then EOF (the connection leaves the registry now); whatever
        the peer sends from now on is neither read nor parsed."""
        if self._state >= CLOSING or self._proto is None:
            return
        if count:
            self._api.metrics.connections_rejected.labels(str(code)).inc()
        self._start_closing()
        self._proto.send_close(code, reason)
        self._flush()
        transport = self._transport
        assert transport is not None
        if transport.can_write_eof() and not transport.is_closing():
            transport.write_eof()  # the peer learns at once that nothing follows the close frame

    def _finish(self) -> None:
        self._cancel_timer()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.stop()
            # not now: this can run inside the registry's loop over the user's connections
            asyncio.get_running_loop().call_soon(self._api.registry.unregister, connection)
        tasks, self._tasks = self._tasks, None
        current = asyncio.current_task()
        for task in tasks or ():
            if task is not current:
                task.cancel()

    def _flush(self) -> None:
        proto, transport = self._proto, self._transport
        assert proto is not None
        assert transport is not None
        eof = False
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                eof = True
        if eof:
            if self._state < CLOSING:
                self._start_closing()
            transport.close()

    def _start_closing(self) -> None:
        """Leave the open states for good: the connection leaves the registry now, the socket
        reads nothing more, and the transport is dropped after a short grace (see `_linger`)."""
        self._finish()
        self._state = CLOSING
        transport = self._transport
        assert transport is not None
        if transport.is_reading():
            transport.pause_reading()
        loop = asyncio.get_running_loop()
        self._closing_since = loop.time()
        self._timer = loop.call_later(CLOSE_GRACE, self._linger)

    def _linger(self) -> None:
        """Drop the transport once the peer has acknowledged everything written (the close
        frame included), or after the close timeout for a peer that still leaves output unread
        (a slow reader gets its close frame after what is already in its socket buffer)."""
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        if _unsent(transport) and loop.time() - self._closing_since < self._api.close_timeout:
            self._timer = loop.call_later(CLOSE_GRACE, self._linger)
        else:
            transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks is not None:
            self._tasks.discard(task)

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("WebSocket connection failed")
            self._close(INTERNAL, "internal error", count=False)


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes written to `transport` that the peer has not acknowledged: the transport's buffer
    and the kernel's send queue (where the platform tells it)."""
    unsent = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return unsent


def _utc(stamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, dt.UTC)
