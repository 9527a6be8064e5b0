"""The WebSocket endpoint `/ws` (protocol §4): the whole lifecycle of a connection in one place.

Origin check → accept → first-frame auth (10 s) → register → welcome (+ replay on resume) →
read client frames while the writer sends events → unregister in `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

import orjson
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from hub import streams
from hub.connection import Connection, SlowConsumer, StreamGap, TokenExpired
from hub.db import Database, rfc3339
from hub.identity import Authenticator, AuthError, Identity
from hub.metrics import Metrics
from hub.registry import Registry
from hub.settings import Settings, normalize_origin
from hub.streams import StoredEvent

log = logging.getLogger("hub.ws")

MAX_FRAME = 4096
AUTH_FAILED, FORBIDDEN, RATE_LIMITED, SLOW_CONSUMER = 4001, 4003, 4008, 4009
TOO_BIG, INTERNAL = 1009, 1011
CLOSE_TIMEOUT = 5.0


class Closed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class WebSocketApi:
    def __init__(self, settings: Settings, db: Database, registry: Registry,
                 authenticator: Authenticator, metrics: Metrics) -> None:
        self._settings = settings
        self._db = db
        self._registry = registry
        self._auth = authenticator
        self._metrics = metrics
        self._origins = frozenset(settings.allowed_origins)

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/ws", self)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's ASGI app: an instance, not a function, so that starlette hands over the
        server's `send` unwrapped and event frames skip its session layers."""
        await self.endpoint(WebSocket(scope, receive, send), send)

    async def endpoint(self, websocket: WebSocket, raw_send: Send) -> None:
        origin = websocket.headers.get("origin")
        if self._origins and origin is not None and normalize_origin(origin) not in self._origins:
            self._metrics.connections_rejected.labels("origin").inc()
            await websocket.close(code=1008)  # before accept: the handshake gets HTTP 403
            return
        await websocket.accept()
        try:
            await self._serve(websocket, raw_send)
        except Closed as closed:
            self._metrics.connections_rejected.labels(str(closed.code)).inc()
            # A slow reader gets its close frame after what is already in its socket buffer;
            # give it as long as the keepalive gives a silent peer before giving up.
            await _close(websocket, closed.code, closed.reason,
                         max(CLOSE_TIMEOUT, 2 * self._settings.ws_ping_interval))
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("WebSocket connection failed")
            await _close(websocket, INTERNAL, "internal error")

    async def _serve(self, websocket: WebSocket, raw_send: Send) -> None:
        identity, resume_id, resume_epoch = await self._authenticate(websocket)

        async def send(text: str) -> None:
            try:
                await raw_send({"type": "websocket.send", "text": text})
            except OSError:  # the server's "client disconnected", as starlette's own send has it
                websocket.application_state = WebSocketState.DISCONNECTED
                raise WebSocketDisconnect(1006) from None

        connection = Connection(identity.user_id, identity.expires_at, send, self._read_events,
                                self._metrics, self._settings.ws_queue_max_messages,
                                self._settings.ws_queue_max_bytes)
        if not await self._registry.register(connection):
            raise Closed(RATE_LIMITED, "too many connections for this user")
        try:
            head = await streams.read_head(self._db, identity.user_id)
            if head is None:
                raise Closed(AUTH_FAILED, "user no longer exists")
            recovered = (resume_id is not None and resume_epoch == head.epoch
                         and head.trimmed_id <= resume_id <= head.last_id)
            await send(orjson.dumps({
                "type": "welcome", "user_id": identity.user_id, "epoch": head.epoch,
                "last_event_id": head.last_id, "recovered": recovered,
            }).decode())
            if recovered:
                assert resume_id is not None
                connection.start_at(resume_id, replay_to=head.last_id)
            else:
                connection.start_at(head.last_id)
            await self._run(websocket, connection)
        finally:
            await self._registry.unregister(connection)

    async def _authenticate(self, websocket: WebSocket) -> tuple[Identity, int | None, str | None]:
        try:
            async with asyncio.timeout(self._settings.ws_auth_timeout):
                frame = await _receive_json(websocket)
        except TimeoutError:
            raise Closed(AUTH_FAILED, "no auth frame within the time limit") from None
        if not isinstance(frame, dict) or frame.get("type") != "auth":
            raise Closed(AUTH_FAILED, "the first frame must be {\"type\": \"auth\", \"token\": ...}")
        token, last_id, epoch = frame.get("token"), frame.get("last_event_id"), frame.get("epoch")
        if not isinstance(token, str):
            raise Closed(AUTH_FAILED, "auth frame without a token")
        if last_id is not None and (isinstance(last_id, bool) or not isinstance(last_id, int) or last_id < 0):
            raise Closed(AUTH_FAILED, "last_event_id must be a non-negative integer")
        if epoch is not None and not isinstance(epoch, str):
            raise Closed(AUTH_FAILED, "epoch must be a string")
        try:
            identity = self._auth.verify(token)  # the user's existence: its stream head, next
        except AuthError:
            raise Closed(AUTH_FAILED, "invalid or expired token") from None
        return identity, last_id, epoch

    async def _run(self, websocket: WebSocket, connection: Connection) -> None:
        """Read client frames here while a writer task sends events; whichever ends first ends
        the connection. Two coroutines per socket, no more: idle sockets must stay cheap."""
        handler = asyncio.current_task()
        assert handler is not None
        writer = asyncio.create_task(connection.run_writer(), name="ws-writer")
        interrupted = finished = False

        def writer_ended(_: asyncio.Task[None]) -> None:
            nonlocal interrupted
            if finished:  # scheduled before the reader left; cancelling now would hit cleanup
                return
            interrupted = True
            handler.cancel()

        writer.add_done_callback(writer_ended)
        connection.set_expiry(connection.expires_at)
        try:
            await self._read_frames(websocket, connection)
        except asyncio.CancelledError:
            if not interrupted:
                raise
            handler.uncancel()
        finally:
            finished = True
            writer.remove_done_callback(writer_ended)  # no effect once it is scheduled
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            elif not writer.cancelled():
                writer.exception()  # retrieved even when the reader's exception wins
        error = writer.exception()
        if isinstance(error, SlowConsumer):
            self._metrics.slow_consumer_disconnects.inc()
            raise Closed(SLOW_CONSUMER, str(error))
        if isinstance(error, StreamGap):
            raise Closed(SLOW_CONSUMER, "missed events are no longer retained: reconnect")
        if isinstance(error, TokenExpired):
            raise Closed(AUTH_FAILED, str(error))
        if error is not None:
            raise error

    async def _read_frames(self, websocket: WebSocket, connection: Connection) -> None:
        bucket = TokenBucket(self._settings.ws_rate_limit, self._settings.ws_rate_burst)
        while True:
            frame = await _receive_json(websocket)
            if not bucket.take():
                raise Closed(RATE_LIMITED, "too many frames")
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "ping":
                await websocket.send({"type": "websocket.send", "text": '{"type":"pong"}'})
            elif kind == "refresh" and isinstance(frame, dict):
                await self._refresh(websocket, connection, frame.get("token"))
            else:
                await websocket.send({"type": "websocket.send", "text": orjson.dumps({
                    "type": "error", "code": "bad_frame",
                    "detail": "expected {\"type\": \"ping\"} or {\"type\": \"refresh\", \"token\": ...}",
                }).decode()})

    async def _refresh(self, websocket: WebSocket, connection: Connection, token: Any) -> None:
        if not isinstance(token, str):
            raise Closed(AUTH_FAILED, "refresh frame without a token")
        try:
            identity = await self._auth.authenticate(token)
        except AuthError:
            raise Closed(AUTH_FAILED, "invalid or expired token") from None
        if identity.user_id != connection.user_id:
            raise Closed(FORBIDDEN, "token of another user")
        connection.set_expiry(identity.expires_at)
        await websocket.send({"type": "websocket.send", "text": orjson.dumps({
            "type": "refreshed", "expires_at": rfc3339(_utc(connection.expires_at)),
        }).decode()})

    async def _read_events(self, user_id: int, after: int, limit: int,
                           up_to: int | None) -> list[StoredEvent]:
        async with self._db.sessions() as session:
            return await streams.read(session, user_id, after, limit, up_to)


async def _receive_json(websocket: WebSocket) -> Any:
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    raw = message.get("text")
    if raw is None:
        raw = message.get("bytes") or b""
    if len(raw) > MAX_FRAME:
        raise Closed(TOO_BIG, "frame over 4096 bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _utc(stamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp, dt.UTC)


async def _close(websocket: WebSocket, code: int, reason: str, within: float = CLOSE_TIMEOUT) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            await websocket.close(code=code, reason=reason)

