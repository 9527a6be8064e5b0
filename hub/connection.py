"""One authenticated WebSocket's outbound side: ordering, gap filling and backpressure.

Events reach a connection from the broker (live) and from the store (replay, gap fills). A live
event that is the next one in order is written to the socket at once, from the broker's read
callback, as a frame encoded once for all its recipients; anything else goes through the
connection's catch-up task, so ordering lives in one place:
- ids on a connection strictly increase: an id at or below `delivered` is dropped;
- an id that skips ahead makes the task read the missing ids from the store first;
- after the broker reconnects, `catch_up()` makes the task read everything new from the store;
- while the task runs, live events wait in a queue bounded by count and bytes.
Each transport encodes an event its own way (`EventEncoding`: a WebSocket frame for `/ws`, an
SSE message for the HTTP stream); the registry encodes each event once per encoding among the
user's connections.
What the socket has not sent yet is bounded the same way (frames written since its buffer was
last seen empty, and its buffered bytes); overflowing either marks the connection a slow consumer,
which the socket closes with `CloseCode.SLOW_CONSUMER` (the client resumes and loses nothing).
Signals (`signal`) bypass all of this but the last bound: they carry no id, wait in no queue
and are dropped when the connection has not started or has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from hub.metrics import Metrics
from hub.streams import StoredEvent, StreamHead

log = logging.getLogger("hub.connection")

FILL_PAGE = 500
ReadEvents = Callable[[int, int, int, int | None], Awaitable[list[StoredEvent]]]
EVENT_PREFIX = b'{"type":"event",'
WEBSOCKET, STREAM = "ws", "stream"  # the transports, as metrics label them


class ConnectionEnded(Exception):
    """Why a connection's outbound side stopped; the socket turns it into a close code."""


class StreamGap(ConnectionEnded):
    """Events this connection must deliver are no longer in the store (retention removed them);
    the socket closes with `CloseCode.HISTORY_GONE`."""


class SlowConsumer(ConnectionEnded):
    """The outbound queue or the socket's buffer overflowed."""


class AuthEnded(ConnectionEnded):
    """The connection's authentication no longer holds (the socket closes with `CloseCode.AUTH_FAILED`)."""


class TokenExpired(AuthEnded):
    """The access token expired and no refresh came."""


class SessionRevoked(AuthEnded):
    """The session of the connection's token was revoked (logout, password change)."""


class DeliveryFailed(ConnectionEnded):
    """Reading the store for a gap fill failed (logged)."""


class EventEncoding(Protocol):
    """How a transport writes one event: equal encodings (`==`, hashable) give equal bytes for
    the same payload, so the registry encodes an event once for all connections sharing one."""

    def encode(self, payload: bytes) -> bytes:
        """The bytes a connection writes for an event's channel payload."""
        ...

    def encode_signal(self, payload: bytes) -> bytes:
        """The bytes a connection writes for a signal's channel payload (`{"type":...}`), which
        `Outlet.write_signal` writes as they are: no id, nothing numbered."""
        ...


class WebSocketEvents:
    """The `/ws` encoding: the `event` frame (every instance is equal)."""

    __slots__ = ()

    def encode(self, payload: bytes) -> bytes:
        return event_frame(payload)

    def encode_signal(self, payload: bytes) -> bytes:
        return text_frame(payload)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WebSocketEvents)

    def __hash__(self) -> int:
        return hash(WebSocketEvents)


WEBSOCKET_EVENTS = WebSocketEvents()


class Outlet(Protocol):
    """The socket side a connection writes to."""

    def write(self, frame: bytes) -> None:
        """An event's frame, in the connection's encoding."""
        ...

    def write_signal(self, frame: bytes) -> None:
        """A signal's frame (`EventEncoding.encode_signal`): written as it is, outside the
        transport's event numbering."""
        ...

    def buffered(self) -> int: ...

    async def drain(self) -> None: ...

    def ended(self, reason: ConnectionEnded) -> None: ...


class Connection:
    """Outbound state of one socket. `offer` never blocks; `stop` ends it for good."""

    __slots__ = ("_bytes", "_catch_up", "_clock", "_ended", "_expiry", "_fill_to", "_max_bytes",
                 "_max_messages", "_metrics", "_observe", "_outlet", "_queue", "_read", "_started",
                 "_task", "_unsent", "delivered", "encoding", "expires_at", "session_id", "transport",
                 "user_id")

    def __init__(self, user_id: int, expires_at: float, outlet: Outlet, read: ReadEvents,
                 metrics: Metrics, max_messages: int, max_bytes: int,
                 session_id: str | None = None, clock: Callable[[], float] = time.time,
                 encoding: EventEncoding = WEBSOCKET_EVENTS, transport: str = WEBSOCKET) -> None:
        self.user_id = user_id
        self.encoding = encoding  # what `offer` is given: this encoding of each event
        self.transport = transport  # WEBSOCKET or STREAM
        self.expires_at = expires_at
        self.session_id = session_id  # of the latest token; the socket's refresh updates it
        self.delivered = 0
        self._outlet = outlet
        self._read = read
        self._metrics = metrics
        self._observe = metrics.deliveries.observer(transport)
        self._clock = clock  # unix time, the clock of `expires_at` and of events' `created_at`
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._ended = False
        self._started = False
        self._expiry: asyncio.TimerHandle | None = None
        self._queue: deque[tuple[int, bytes, float]] | None = None  # an idle socket has none (760 bytes)
        self._bytes = 0
        self._unsent = 0
        self._catch_up = False
        self._fill_to: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start_at(self, delivered: int, replay_to: int | None = None) -> None:
        """Begin after `delivered` (the welcome frame is out); replay up to `replay_to` from the
        store, then whatever was offered meanwhile, before anything live."""
        self.delivered = delivered
        self._started = True
        if replay_to is not None and replay_to > delivered:
            self._fill_to = replay_to
        self._pump()

    def offer(self, event_id: int, frame: bytes, created_at: float) -> None:
        """A live event in this connection's `encoding`: written now when it is the next one,
        else queued for the task."""
        if self._ended or event_id <= self.delivered:
            return
        if self._task is None and self._started and event_id == self.delivered + 1:
            self._send(event_id, frame, created_at)
            return
        size = len(frame)
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._max_messages or self._bytes + size > self._max_bytes:
            self._queue = None
            self._bytes = 0
            self._end(SlowConsumer("slow consumer: reconnect and resume"))
            return
        queue.append((event_id, frame, created_at))
        self._bytes += size
        if self._started and self._task is None:
            self._pump()

    def signal(self, frame: bytes, count: int = 1) -> None:
        """Live-only frames (presence, typing) in this connection's `encoding` (its
        `encode_signal`; `count` of them, back to back, written at once): written now, between
        event frames if a replay is under way, never queued, never numbered; each counts
        against the socket's buffer bound like an event frame. Dropped before the welcome frame
        and after the end."""
        if self._ended or not self._started:
            return
        self._outlet.write_signal(frame)
        self._check_unsent(count)

    def catch_up(self) -> None:
        """Read whatever the store has beyond `delivered` (after a broker reconnect)."""
        self._catch_up = True
        if self._started and self._task is None:
            self._pump()

    def set_expiry(self, expires_at: float, within: float | None = None) -> None:
        """(Re)arm the timer that ends the connection when its access token expires (see
        `watch_expiry` for `within`)."""
        self.expires_at = expires_at
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.watch_expiry(within)

    def watch_expiry(self, within: float | None = None) -> None:
        """Arm the expiry timer unless it is armed; with `within`, only if the token expires
        within that many seconds: the caller (a socket's keepalive turn) calls again before
        then, so an idle socket whose token lasts hours keeps no timer (about 500 bytes)."""
        if self._expiry is not None or self._ended:
            return
        left = max(0.0, self.expires_at - self._clock())
        if within is None or left <= within:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_at(loop.time() + left, self._expired)

    def revoke(self) -> None:
        """Its session was revoked: end the connection (the socket closes with `CloseCode.AUTH_FAILED`)."""
        self._end(SessionRevoked("session revoked: sign in again"))

    def stop(self) -> None:
        """The socket is closing: no more writes, timers and the task cancelled."""
        self._ended = True
        self._queue = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _expired(self) -> None:
        self._expiry = None
        self._end(TokenExpired("access token expired"))

    def _end(self, reason: ConnectionEnded) -> None:
        if not self._ended:
            self.stop()
            self._outlet.ended(reason)

    def _send(self, event_id: int, frame: bytes, created_at: float) -> None:
        """Write the next event's frame; end the connection if too much is left unsent."""
        outlet = self._outlet
        outlet.write(frame)
        self.delivered = event_id
        self._observe(max(0.0, self._clock() - created_at))
        self._check_unsent()

    def _check_unsent(self, count: int = 1) -> None:
        """End the connection (4009) if too much of what was written (`count` frames now) is
        left unsent."""
        buffered = self._outlet.buffered()
        if buffered == 0:  # the socket took everything written so far
            self._unsent = 0
        else:
            self._unsent += count
            if self._unsent > self._max_messages or buffered > self._max_bytes:
                self._end(SlowConsumer("slow consumer: reconnect and resume"))

    def _pump(self) -> None:
        """Start the task for whatever is pending: queued events, a replay, a catch-up."""
        if not self._ended and (self._queue or self._catch_up or self._fill_to is not None):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ws-catch-up")

    async def _run(self) -> None:
        try:
            await self._fill_all()
        except ConnectionEnded as reason:
            self._task = None
            self._end(reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading missed events for user %s failed", self.user_id)
            self._task = None
            self._end(DeliveryFailed("internal error"))
        else:
            self._task = None

    async def _fill_all(self) -> None:
        while not self._ended:
            if self._fill_to is not None:
                target, self._fill_to = self._fill_to, None
                await self._fill(target)
            elif self._catch_up:
                self._catch_up = False
                await self._fill(None)
            elif self._queue:
                event_id, frame, created_at = self._queue.popleft()
                if not self._queue:
                    self._queue = None
                self._bytes -= len(frame)
                if event_id <= self.delivered:
                    continue
                if event_id != self.delivered + 1:
                    await self._fill(event_id - 1)
                    if event_id <= self.delivered:
                        continue
                    if event_id != self.delivered + 1:
                        raise StreamGap(f"events {self.delivered + 1}..{event_id - 1} are gone")
                self._send(event_id, frame, created_at)
            else:
                return

    async def _fill(self, up_to: int | None) -> None:
        self._metrics.gap_fills.inc()
        while up_to is None or self.delivered < up_to:
            events = await self._read(self.user_id, self.delivered, FILL_PAGE, up_to)
            if not events:
                return
            if events[0].id != self.delivered + 1:
                raise StreamGap(f"events {self.delivered + 1}..{events[0].id - 1} are gone")
            for event in events:
                if self._ended:
                    return
                await self._outlet.drain()
                self._send(event.id, self.encoding.encode(event.payload), event.created_at)
            if len(events) < FILL_PAGE:
                return


def resume_served(head: StreamHead, resume_id: int | None, resume_epoch: str | None) -> bool:
    """Whether a resume after `resume_id` of `resume_epoch` can be served in full (protocol
    §4.3, `recovered`): the same epoch, and an id that history still holds and not ahead of it."""
    return (resume_id is not None and resume_epoch == head.epoch
            and head.trimmed_id <= resume_id <= head.last_id)


def welcome_object(user_id: int, epoch: str, last_event_id: int, recovered: bool) -> dict[str, object]:
    """The welcome object of protocol §4.3 (the `/ws` frame and the stream's `welcome` event)."""
    return {"type": "welcome", "user_id": user_id, "epoch": epoch,
            "last_event_id": last_event_id, "recovered": recovered}


def text_frame(data: bytes) -> bytes:
    """A server-to-client WebSocket text frame (unmasked, final) carrying `data` (UTF-8)."""
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + data
    return b"\x81\x7f" + size.to_bytes(8, "big") + data


def event_frame(payload: bytes) -> bytes:
    """The `event` frame of a channel payload, `{"type":"event", <the event's own fields>}`, as
    the bytes every recipient's socket is sent."""
    return text_frame(EVENT_PREFIX + payload[1:])
