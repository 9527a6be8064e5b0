"""The event stream over HTTP (protocol §12): `GET /api/v1/stream`, Server-Sent Events with the
guarantees of `/ws`, for clients whose network breaks WebSockets.

A stream is one more `Outlet` of a `Connection` (hub/connection.py), registered in the same
`Registry` as the sockets: the same ordering, gap filling, bounds (WS_QUEUE_MAX_MESSAGES and
WS_QUEUE_MAX_BYTES: a stream that falls behind ends with `slow_consumer`), per-user connection
limit, session revocation and token expiry. Events are encoded once per recipient set
(`SseEvents`); the stream's epoch is written before each by the outlet (`id: <epoch>:<id>`).
Signals (presence, typing: protocol §11) are written as `event: <type>` messages without an
`id` line, so that a client's Last-Event-ID stays the last event's, within the same bounds.
This module answers the request up to its head (and every refusal); then, on the hub's own HTTP
protocol, the connection is handed to a `StreamSocket` (hub/stream_socket.py) that writes the
stream with no task per stream; a `HEAD`, or another server, gets the ASGI response of
hub/stream_outlet.py.

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

import logging
from collections.abc import Callable
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.connection import STREAM, Connection, resume_served, welcome_object
from hub.db import Database
from hub.errors import RateLimited, Unauthorized, Unavailable
from hub.http import api, bearer_token, read_query
from hub.http_protocol import CONTROL, BoundedHeadProtocol
from hub.identity import Authenticator, AuthError, Identity
from hub.metrics import Metrics
from hub.ratelimit import Limit, RateLimiter, client_address
from hub.registry import Registry
from hub.settings import Settings
from hub.sse import SSE_EVENTS, sse_message
from hub.stream_outlet import StreamOutlet
from hub.stream_reads import StreamReads
from hub.stream_socket import StreamSocket, StreamStart
from hub.stream_tickets import TicketStore, TicketStoreError
from hub.ws_keepalive import KeepaliveWheel

log = logging.getLogger("hub.event_stream")

PATH = "/api/v1/stream"
TICKETS_PATH = "/api/v1/stream/tickets"
CLOSE_TIMEOUT = 5.0
BUSY_RETRY_AFTER = 5  # seconds: a user at the connection limit tries again after this
URL_TOKENS = ("token", "access_token")


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
                 authenticator: Authenticator, metrics: Metrics, reads: StreamReads,
                 tickets: TicketStore, limiter: RateLimiter, ticket_limit: Limit,
                 session_revoked: Callable[[str], bool]) -> None:
        self.settings = settings
        self.db = db
        self.registry = registry
        self.auth = authenticator
        self.metrics = metrics
        self.reads = reads  # shared with /ws: heads and gap fills of every socket, merged
        self.tickets = tickets
        self.limiter = limiter
        self.ticket_limit = ticket_limit
        self.session_revoked = session_revoked
        self.close_timeout = max(CLOSE_TIMEOUT, 2 * settings.ws_ping_interval)
        self.keepalive = KeepaliveWheel(settings.ws_ping_interval)  # lean streams' pings

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
        # on the hub's own HTTP protocol the stream takes the connection over after its head
        lean = request.method == "GET" and isinstance(request.scope.get(CONTROL), BoundedHeadProtocol)
        outlet: StreamSocket | StreamOutlet = StreamSocket(self) if lean else StreamOutlet(self)
        connection = Connection(identity.user_id, identity.expires_at, outlet, self.reads.events,
                                self.metrics, self.settings.ws_queue_max_messages,
                                self.settings.ws_queue_max_bytes, identity.session_id,
                                encoding=SSE_EVENTS, transport=STREAM)
        if not await self.registry.register(connection):
            raise RateLimited("too many connections for this user", BUSY_RETRY_AFTER)
        try:
            head = await self.reads.head(identity.user_id)
            if head is None:
                raise Unauthorized("user no longer exists")
        except BaseException:
            connection.stop()
            self.registry.unregister(connection)
            raise
        recovered = resume_served(head, resume_id, resume_epoch)
        after = resume_id if recovered and resume_id is not None else head.last_id
        welcome = sse_message("welcome", welcome_object(identity.user_id, head.epoch, head.last_id,
                                                        recovered), f"{head.epoch}:{after}")
        replay_to = head.last_id if recovered else None
        id_prefix = b"id: %s:" % head.epoch.encode()
        if isinstance(outlet, StreamSocket):
            outlet.attach(connection, id_prefix)
            return StreamStart(self, outlet, connection, welcome, after, replay_to)
        outlet.begin(connection, id_prefix, welcome, after, replay_to)
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
