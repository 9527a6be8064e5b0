"""The event stream over HTTP (protocol §12): `GET /api/v1/stream`, Server-Sent Events with the
guarantees of `/ws`, for clients whose network breaks WebSockets.

A stream is one more `Outlet` of a `Connection` (hub/connection.py), registered in the same
`Registry` as the sockets: the same ordering, gap filling, bounds (WS_QUEUE_MAX_MESSAGES and
WS_QUEUE_MAX_BYTES: a stream that falls behind ends with `slow_consumer`), per-user connection
limit, session revocation and token expiry. Events are encoded once per recipient set
(`SseEvents`); the stream's epoch is written before each by the outlet (`id: <epoch>:<id>`).
Signals (presence, typing: protocol §11) are written as `event: <type>` messages without an
`id` line, so that a client's Last-Event-ID stays the last event's, within the same bounds.

Authentication: `Authorization: Bearer <access token>`, or a one-time `?ticket=` from
`POST /api/v1/stream/tickets` (hub/stream_tickets.py); an access token in the URL is refused.
Resume: `Last-Event-ID: <epoch>:<id>` (what an EventSource sends) or `?last_event_id=&epoch=`.
The `welcome` event carries the id the stream continues after, so that an EventSource's
automatic reconnect resumes exactly. The stream ends with an `error` event (`token_expired`,
`slow_consumer`, `server_restarting`, `session_revoked`, `history_gone`, `internal`).

Never log a stream's query string: it may hold a ticket (hub/server.py keeps it out of the
access log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hub import streams
from hub.connection import (
    STREAM,
    AuthEnded,
    Connection,
    ConnectionEnded,
    ReadEvents,
    SessionRevoked,
    SlowConsumer,
    StreamGap,
    TokenExpired,
    resume_served,
    welcome_object,
)
from hub.db import Database
from hub.errors import RateLimited, Unauthorized, Unavailable
from hub.http import api, bearer_token, read_query
from hub.http_protocol import CONTROL, BoundedHeadProtocol
from hub.identity import Authenticator, AuthError, Identity
from hub.metrics import Metrics
from hub.ratelimit import Limit, RateLimiter, client_address
from hub.registry import Registry
from hub.settings import Settings
from hub.sse import SSE_EVENTS, end_message, sse_message
from hub.stream_tickets import TicketStore, TicketStoreError

log = logging.getLogger("hub.event_stream")

PATH = "/api/v1/stream"
TICKETS_PATH = "/api/v1/stream/tickets"
PING = b": ping\n\n"
DRAIN_ABOVE = 64 * 1024  # a replay waits for the writer once this much is pending
CLOSE_TIMEOUT = 5.0
BUSY_RETRY_AFTER = 5  # seconds: a user at the connection limit tries again after this
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
    (b"x-content-type-options", b"nosniff"),
]
URL_TOKENS = ("token", "access_token")


def ending(reason: ConnectionEnded) -> tuple[str, str]:
    """The error event's code and detail for why a connection ended."""
    if isinstance(reason, SlowConsumer):
        return "slow_consumer", "the client did not take its events fast enough: reconnect and resume"
    if isinstance(reason, TokenExpired):
        return "token_expired", "the access token expired: refresh it and reconnect"
    if isinstance(reason, SessionRevoked):
        return "session_revoked", "the session was ended (logout, password change): sign in again"
    if isinstance(reason, AuthEnded):
        return "token_expired", str(reason)
    if isinstance(reason, StreamGap):
        return "history_gone", "missed events are no longer retained: reconnect"
    return "internal", "internal error: reconnect"


class StreamQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: Annotated[str | None, Field(max_length=128)] = None
    last_event_id: Annotated[int | None, Field(ge=0, lt=2**63)] = None
    epoch: Annotated[str | None, Field(max_length=64)] = None


class TicketAnswer(BaseModel):
    ticket: str
    expires_in: int


class EventStreamApi:
    """The stream and its tickets. `session_revoked` says whether a session id was revoked (a
    ticket issued before its session's revocation is refused)."""

    def __init__(self, settings: Settings, db: Database, registry: Registry,
                 authenticator: Authenticator, metrics: Metrics, read_events: ReadEvents,
                 tickets: TicketStore, limiter: RateLimiter, ticket_limit: Limit,
                 session_revoked: Callable[[str], bool]) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.auth = authenticator
        self.metrics = metrics
        self.read_events = read_events
        self.tickets = tickets
        self.limiter = limiter
        self.ticket_limit = ticket_limit
        self.session_revoked = session_revoked
        self.close_timeout = max(CLOSE_TIMEOUT, 2 * settings.ws_ping_interval)

    def routes(self) -> list[Route]:
        return [Route(PATH, self.stream, methods=["GET"]),
                Route(TICKETS_PATH, self.ticket, methods=["POST"])]

    @api(summary="Get a one-time ticket for the event stream (30 s, single use)", tag="stream",
         response=TicketAnswer, status=201, auth="user", errors=(401, 429, 503))
    async def ticket(self, request: Request) -> Response:
        await self.limiter.enforce(self.ticket_limit, client_address(request),
                                   "too many sign-in attempts from this address")
        token = bearer_token(request)
        if token is None:
            raise Unauthorized("send Authorization: Bearer <access_token>")
        try:
            identity = await self.auth.authenticate(token)
        except AuthError:
            raise Unauthorized() from None
        try:
            ticket = await self.tickets.issue(identity)
        except TicketStoreError as exc:
            log.warning("issuing a stream ticket failed: %s", exc)
            raise Unavailable("the ticket store is unreachable: try again") from None
        body = orjson.dumps({"ticket": ticket, "expires_in": self.tickets.ttl})
        return Response(body, status_code=201, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @api(summary="The user's event stream as Server-Sent Events (protocol §12)", tag="stream",
         query=StreamQuery, auth="user", errors=(401, 422, 429, 503),
         headers={"Last-Event-ID": {"type": "string", "maxLength": 200,
                                    "description": "<epoch>:<event id> to resume after"}},
         content_type="text/event-stream")
    async def stream(self, request: Request) -> Response:
        if any(name in request.query_params for name in URL_TOKENS):
            raise Unauthorized("an access token in the URL is refused: send Authorization: "
                               "Bearer <access_token>, or a ticket from POST " + TICKETS_PATH)
        query = read_query(request, StreamQuery)
        identity = await self._identity(request, query.ticket)
        resume_id, resume_epoch = query.last_event_id, query.epoch
        last_event_id = request.headers.get("last-event-id")
        if last_event_id is not None and resume_id is None:
            resume_id, resume_epoch = _parse_last_event_id(last_event_id)
        outlet = StreamOutlet(self)
        connection = Connection(identity.user_id, identity.expires_at, outlet, self.read_events,
                                self.metrics, self.settings.ws_queue_max_messages,
                                self.settings.ws_queue_max_bytes, identity.session_id,
                                encoding=SSE_EVENTS, transport=STREAM)
        if not await self.registry.register(connection):
            raise RateLimited("too many connections for this user", BUSY_RETRY_AFTER)
        try:
            head = await streams.read_head(self.db, identity.user_id)
            if head is None:
                raise Unauthorized("user no longer exists")
        except BaseException:
            connection.stop()
            self.registry.unregister(connection)
            raise
        outlet.begin(connection, head, resume_served(head, resume_id, resume_epoch), resume_id)
        if request.method == "HEAD":
            outlet.finish()
        return outlet

    async def _identity(self, request: Request, ticket: str | None) -> Identity:
        token = bearer_token(request)
        if token is not None:
            try:
                return await self.auth.authenticate(token)
            except AuthError:
                raise Unauthorized() from None
        if ticket is None:
            raise Unauthorized("send Authorization: Bearer <access_token>, or ?ticket= from "
                               "POST " + TICKETS_PATH)
        try:
            identity = await self.tickets.take(ticket)
        except TicketStoreError as exc:
            log.warning("taking a stream ticket failed: %s", exc)
            raise Unavailable("the ticket store is unreachable: try again") from None
        if identity is None or (identity.session_id is not None
                                and self.session_revoked(identity.session_id)):
            raise Unauthorized("the ticket is unknown, used or expired: get a new one")
        return identity


def _parse_last_event_id(value: str) -> tuple[int | None, str | None]:
    """`<epoch>:<id>` as (id, epoch); anything else resumes nothing (recovered: false)."""
    epoch, _, number = value.strip().rpartition(":")
    if not epoch or not number.isdigit() or len(number) > 18:
        return 0, None
    return int(number), epoch


class StreamOutlet(Response):
    """One stream's response and its connection's `Outlet`: what the connection writes is kept
    in a buffer that the response's task hands to the server; the buffer counts as unsent while
    the server waits for the peer to read (or when it is over the byte bound at once)."""

    def __init__(self, api: EventStreamApi) -> None:  # no super().__init__: nothing is rendered
        self._api = api
        self._connection: Connection | None = None
        self._chunks: list[bytes] = []
        self._pending = 0
        self._id_prefix = b"id: "
        self._sending = False
        self._finished = False
        self._disconnected = False
        self._wake: asyncio.Future[None] | None = None
        self._flushed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._control: BoundedHeadProtocol | None = None
        self._start: tuple[int, int | None] = (0, None)  # after which id; replay up to

    def begin(self, connection: Connection, head: streams.StreamHead, recovered: bool,
              resume_id: int | None) -> None:
        """What the response starts with: the welcome event, then from where events follow."""
        self._connection = connection
        self._id_prefix = b"id: %s:" % head.epoch.encode()
        after = resume_id if recovered and resume_id is not None else head.last_id
        self._chunks.append(sse_message("welcome", welcome_object(connection.user_id, head.epoch,
                                                                   head.last_id, recovered),
                                        f"{head.epoch}:{after}"))
        self._start = (after, head.last_id if recovered else None)

    def finish(self) -> None:
        self._finished = True

    # Outlet (hub.connection)

    def write(self, frame: bytes) -> None:
        self._chunks.append(self._id_prefix)
        self._chunks.append(frame)
        self._pending += len(frame)
        self._wakeup()

    def write_signal(self, frame: bytes) -> None:
        self._chunks.append(frame)  # no id line: the client's Last-Event-ID stays an event's
        self._pending += len(frame)
        self._wakeup()

    def buffered(self) -> int:
        if self._sending or self._pending > self._api.settings.ws_queue_max_bytes:
            return self._pending
        return 0

    async def drain(self) -> None:
        while (self._sending or self._pending > DRAIN_ABOVE) and not self._finished:
            if self._flushed is None:
                self._flushed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._flushed)

    def ended(self, reason: ConnectionEnded) -> None:
        if isinstance(reason, SlowConsumer):
            self._api.metrics.slow_consumer_disconnects.inc()
        self._end(*ending(reason))

    # the response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api, connection = self._api, self._connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        control = scope.get(CONTROL)
        watcher: asyncio.Task[None] | None = None
        if isinstance(control, BoundedHeadProtocol):
            self._control = control
            control.on_shutdown = self._shutdown
            control.on_lost = self._lost
        else:  # another server: a task waits for the disconnect
            watcher = loop.create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            if not self._finished:
                connection.set_expiry(connection.expires_at)
                connection.start_at(*self._start)
                self._timer = loop.call_later(api.settings.ws_ping_interval, self._ping)
            await self._write_until_finished(send)
            if not self._disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            self._finished = True
            for timer in (self._timer, self._deadline):
                if timer is not None:
                    timer.cancel()
            if self._control is not None:
                self._control.on_shutdown = self._control.on_lost = None
            connection.stop()
            api.registry.unregister(connection)
            self._resolve_flushed()

    async def _write_until_finished(self, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._chunks and not self._finished:
                self._wake = loop.create_future()
                await self._wake
                self._wake = None
            if self._disconnected:
                return
            chunks, self._chunks, self._pending = self._chunks, [], 0
            if chunks:
                self._sending = True
                try:
                    await send({"type": "http.response.body", "body": b"".join(chunks),
                                "more_body": True})
                finally:
                    self._sending = False
                self._resolve_flushed()
            if self._finished and not self._chunks:
                return

    async def _watch(self, receive: Receive) -> None:
        """Wait for the peer to go away (the request has no body to read)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._lost()

    def _lost(self) -> None:
        self._disconnected = True
        self._finished = True
        if self._connection is not None:
            self._connection.stop()
        self._wakeup()

    def _ping(self) -> None:
        self._chunks.append(PING)
        self._pending += len(PING)
        self._wakeup()
        self._timer = asyncio.get_running_loop().call_later(self._api.settings.ws_ping_interval,
                                                            self._ping)

    def _shutdown(self) -> None:
        self._end("server_restarting", "the server is restarting: reconnect and resume")

    def _end(self, code: str, detail: str) -> None:
        """Send the error event after whatever is pending and end the response; a peer that does
        not take it within the close timeout is dropped."""
        if self._finished:
            return
        self._finished = True
        self._api.metrics.stream_ends.labels(code).inc()
        if self._connection is not None:
            self._connection.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if code == "slow_consumer":  # the client resumes after the last id it did receive
            self._chunks.clear()
        self._chunks.append(end_message(code, detail))
        self._wakeup()
        self._deadline = asyncio.get_running_loop().call_later(self._api.close_timeout, self._abort)

    def _abort(self) -> None:
        self._disconnected = True
        if self._control is not None:
            self._control.abort()
        self._wakeup()

    def _wakeup(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _resolve_flushed(self) -> None:
        flushed, self._flushed = self._flushed, None
        if flushed is not None and not flushed.done():
            flushed.set_result(None)

