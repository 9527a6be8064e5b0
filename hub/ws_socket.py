"""One client socket of `/ws`, from the upgrade to the close: the connection's lifecycle in one
place (protocol §4). An asyncio protocol driven by the transport's callbacks; it also is its
`Connection`'s `Outlet`. The states only move forward: HANDSHAKE → AUTH → STARTING → OPEN →
CLOSING → CLOSED, and a socket closed from any state leaves the registry at once.

Every close uses a `CloseCode` member; once the hub has decided to close, it reads and parses
nothing more, sends the close frame and then EOF, and drops the transport when the peer has
acknowledged everything (or after the API's close timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol

from hub.close_codes import CloseCode
from hub.connection import (
    WEBSOCKET,
    AuthEnded,
    Connection,
    ConnectionEnded,
    SlowConsumer,
    StreamGap,
    resume_served,
)
from hub.identity import AuthError, Identity
from hub.signals import FrameHandler
from hub.socket_queue import Linger, WriteFlow
from hub.ws_budget import FrameBudget
from hub.ws_frames import (
    BAD_FRAME,
    PONG,
    AuthRequest,
    Fragments,
    InvalidText,
    auth_request,
    error,
    parse,
    refreshed,
    welcome,
)
from hub.ws_handshake import upgrade
from hub.ws_tasks import SocketTasks

if TYPE_CHECKING:
    from hub.ws import WebSocketApi

CLOSE_GRACE = 2.0  # a closing socket whose every byte the peer has acknowledged is dropped after this

HANDSHAKE, AUTH, STARTING, OPEN, CLOSING, CLOSED = range(6)


class HubSocket(WriteFlow):
    """One client socket from the upgrade to the close; also its connection's `Outlet`."""

    __slots__ = ("_api", "_budget", "_connection", "_early", "_fragments",
                 "_pending_pong", "_proto", "_server_connections", "_state", "_tasks", "_timer")

    def __init__(self, api: WebSocketApi, server_connections: set[Any]) -> None:
        self._api = api
        self._server_connections = server_connections
        self._transport: asyncio.Transport | None = None
        self._state = HANDSHAKE
        self._proto: Protocol | None = None
        self._connection: Connection | None = None
        self._budget: FrameBudget | None = None
        self._timer: asyncio.TimerHandle | Linger | int | None = None  # int: a keepalive bucket
        self._pending_pong = False
        self._tasks: SocketTasks | None = None
        self._early: list[tuple[Opcode, bytes]] | None = None
        self._fragments = Fragments()
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
                self._close(CloseCode.TOO_BIG, "a message in too many fragments")
            else:
                self._close(CloseCode.RATE_LIMITED, "too many frames")

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
        self.resume_writing()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close with 1012 (clients reconnect to another process)."""
        if self._state in (AUTH, STARTING, OPEN):
            self._close(CloseCode.RESTARTING, "server restarting", count=False)
        if self._transport is not None:
            self._transport.close()

    # Outlet (hub.connection)

    def write(self, frame: bytes) -> None:
        assert self._transport is not None
        self._transport.write(frame)

    write_signal = write  # a WebSocket frame carries no id outside its payload

    def ended(self, reason: ConnectionEnded) -> None:
        if isinstance(reason, SlowConsumer):
            self._api.metrics.slow_consumer_disconnects.labels(WEBSOCKET).inc()
            self._close(CloseCode.SLOW_CONSUMER, str(reason))
        elif isinstance(reason, StreamGap):
            self._close(CloseCode.HISTORY_GONE, "missed events are no longer retained: reconnect")
        elif isinstance(reason, AuthEnded):
            self._close(CloseCode.AUTH_FAILED, str(reason))
        else:
            self._close(CloseCode.INTERNAL, "internal error")

    # the handshake

    def _handshake(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        api = self._api
        settings = api.settings
        answer = upgrade(data, settings.ws_max_message_bytes, api.origin_allowed, api.metrics)
        if answer.answer:
            transport.write(answer.answer)
        if answer.protocol is None:
            self._state = CLOSED
            transport.close()
            return
        self._proto = answer.protocol
        self._budget = FrameBudget(settings.ws_rate_limit, settings.ws_rate_burst, settings.ws_max_fragments)
        self._state = AUTH
        self._timer = asyncio.get_running_loop().call_later(
            settings.ws_auth_timeout, self._close, CloseCode.AUTH_FAILED,
            "no auth frame within the time limit")

    # frames from the client

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.PONG:
            self._pending_pong = False
            return
        message = self._fragments.message(frame)
        if message is not None:
            self._message(*message)

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
                self._close(CloseCode.RATE_LIMITED, "too many frames")
                return
            early.append((opcode, data))

    def _parse(self, opcode: Opcode, data: bytes) -> Any:
        try:
            return parse(opcode, data)
        except InvalidText as exc:
            self._close(CloseCode.INVALID_DATA, str(exc), count=False)
            return None

    def _authenticate(self, opcode: Opcode, data: bytes) -> None:
        frame = self._parse(opcode, data)
        if self._state != AUTH:
            return
        request = auth_request(frame)
        if not isinstance(request, AuthRequest):
            self._close(CloseCode.AUTH_FAILED, request)
            return
        try:
            identity = self._api.auth.verify(request.token)  # the user's existence: its stream head, next
        except AuthError:
            self._close(CloseCode.AUTH_FAILED, "invalid or expired token")
            return
        self._cancel_timer()
        self._state = STARTING
        self._spawn(self._start(identity, request.last_event_id, request.epoch))

    async def _start(self, identity: Identity, resume_id: int | None, resume_epoch: str | None) -> None:
        api = self._api
        settings = api.settings
        connection = Connection(identity.user_id, identity.expires_at, self, api.reads.events,
                                api.metrics, settings.ws_queue_max_messages, settings.ws_queue_max_bytes,
                                identity.session_id)
        self._connection = connection
        if not await api.registry.register(connection):
            self._close(CloseCode.RATE_LIMITED, "too many connections for this user")
            return
        head = await api.reads.head(identity.user_id)
        if self._state != STARTING:
            return
        if head is None:
            self._close(CloseCode.AUTH_FAILED, "user no longer exists")
            return
        recovered = resume_served(head, resume_id, resume_epoch)
        self.write(welcome(identity.user_id, head.epoch, head.last_id, recovered))
        self._state = OPEN
        self._timer = api.keepalive.add(self)
        connection.set_expiry(identity.expires_at, self._api.keepalive.expiry_horizon)
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
                self._close(CloseCode.AUTH_FAILED, "refresh frame without a token")
                return
            self._spawn(self._refresh(token))
        elif isinstance(kind, str) and kind in self._api.client_frames:
            assert isinstance(frame, dict)
            self._spawn(self._feature_frame(self._api.client_frames[kind], frame))
        else:
            self.write(BAD_FRAME)

    async def _feature_frame(self, handler: FrameHandler, frame: dict[str, Any]) -> None:
        """A frame a feature answers (`typing`); its refusal becomes an `error` frame."""
        connection = self._connection
        assert connection is not None
        refused = await handler(connection.user_id, frame)
        if refused is not None and self._state == OPEN:
            self.write(error(*refused))

    async def _refresh(self, token: str) -> None:
        connection = self._connection
        assert connection is not None
        try:
            identity = await self._api.auth.authenticate(token)
        except AuthError:
            self._close(CloseCode.AUTH_FAILED, "invalid or expired token")
            return
        if self._state != OPEN:
            return
        if identity.user_id != connection.user_id:
            self._close(CloseCode.FORBIDDEN, "token of another user")
            return
        connection.session_id = identity.session_id
        connection.set_expiry(identity.expires_at, self._api.keepalive.expiry_horizon)
        self.write(refreshed(connection.expires_at))

    # keepalive, closing

    def keepalive(self) -> None:
        """Its turn on the process's `KeepaliveWheel` (hub/ws_keepalive.py)."""
        proto = self._proto
        if proto is None or self._state != OPEN:
            return
        if self._pending_pong:  # no pong within a whole interval
            # a close frame, then EOF: _flush ends it
            proto.fail(CloseCode.INTERNAL, "keepalive ping timeout")
            self._flush()
            return
        self._pending_pong = True
        proto.send_ping(b"hub")
        self._flush()
        self._timer = self._api.keepalive.add(self)
        if self._connection is not None:
            self._connection.watch_expiry(self._api.keepalive.expiry_horizon)

    def _close(self, code: CloseCode, reason: str, *, count: bool = True) -> None:
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
        if tasks is not None:
            tasks.cancel()

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
        reads nothing more, and the transport is dropped once the peer has read it all (`Linger`)."""
        self._finish()
        self._state = CLOSING
        transport = self._transport
        assert transport is not None
        if transport.is_reading():
            transport.pause_reading()
        self._timer = Linger(transport, CLOSE_GRACE, self._api.close_timeout)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        self._api.keepalive.cancel(self, timer)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task cancelled when the socket closes; a failure closes it with 1011."""
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = SocketTasks()
        tasks.spawn(work, self._failed).add_done_callback(self._task_done)

    def _task_done(self, _: asyncio.Task[None]) -> None:
        if not self._tasks:  # an idle socket keeps no empty set (216 bytes)
            self._tasks = None

    def _failed(self) -> None:
        self._close(CloseCode.INTERNAL, "internal error", count=False)
