"""One authenticated WebSocket's outbound side: ordering, gap filling and a bounded queue.

Events reach a connection from the broker (live) and from the store (replay, gap fills). The
writer task is the only sender of events, so ordering lives in one place:
- ids on a connection strictly increase: an id at or below `delivered` is dropped;
- an id that skips ahead makes the writer read the missing ids from the store first;
- after the broker reconnects, `catch_up()` makes the writer read everything new from the store.
The queue is bounded by count and bytes; overflowing it marks the connection a slow consumer,
which the endpoint closes with 4009 (the client resumes and loses nothing).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from hub.metrics import Metrics
from hub.streams import StoredEvent

FILL_PAGE = 500
ReadEvents = Callable[[int, int, int, int | None], Awaitable[list[StoredEvent]]]
SendText = Callable[[str], Awaitable[None]]


class ConnectionEnded(Exception):
    """Why the writer stopped; the endpoint turns it into a close code."""


class StreamGap(ConnectionEnded):
    """Events this connection must deliver are no longer in the store (retention removed them)."""


class SlowConsumer(ConnectionEnded):
    """The outbound queue overflowed."""


class TokenExpired(ConnectionEnded):
    """The access token expired and no refresh came."""


class Connection:
    """Outbound state of one socket. `offer` never blocks; `run_writer` sends until cancelled."""

    __slots__ = ("_bytes", "_catch_up", "_ended", "_expiry", "_fill_to", "_interrupted",
                 "_max_bytes", "_max_messages", "_metrics", "_queue", "_read", "_send",
                 "_sending", "_waiter", "_writer", "delivered", "expires_at", "user_id")

    def __init__(self, user_id: int, expires_at: float, send: SendText, read: ReadEvents,
                 metrics: Metrics, max_messages: int, max_bytes: int) -> None:
        self.user_id = user_id
        self.expires_at = expires_at
        self.delivered = 0
        self._ended: ConnectionEnded | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._send = send
        self._read = read
        self._metrics = metrics
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._queue: deque[tuple[int, str, float]] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._catch_up = False
        self._fill_to: int | None = None
        self._writer: asyncio.Task[None] | None = None
        self._sending = False
        self._interrupted = False

    def start_at(self, delivered: int, replay_to: int | None = None) -> None:
        """Begin after `delivered`; replay up to `replay_to` from the store before anything live."""
        self.delivered = delivered
        if replay_to is not None and replay_to > delivered:
            self._fill_to = replay_to
            self._wake()

    def offer(self, event_id: int, frame: str, created_at: float) -> None:
        """Queue a live event frame; on overflow drop the queue and flag a slow consumer."""
        if self._ended is not None or event_id <= self.delivered:
            return
        size = len(frame)
        if len(self._queue) >= self._max_messages or self._bytes + size > self._max_bytes:
            self._queue.clear()
            self._bytes = 0
            self._end(SlowConsumer("slow consumer: reconnect and resume"))
            return
        self._queue.append((event_id, frame, created_at))
        self._bytes += size
        self._wake()

    def catch_up(self) -> None:
        """Read whatever the store has beyond `delivered` (after a broker reconnect)."""
        self._catch_up = True
        self._wake()

    def set_expiry(self, expires_at: float) -> None:
        """(Re)arm the timer that ends the connection when its access token expires."""
        self.expires_at = expires_at
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + max(0.0, expires_at - time.time()),
                                    self._end, TokenExpired("access token expired"))

    def _end(self, reason: ConnectionEnded) -> None:
        if self._ended is None:
            self._ended = reason
            # A peer that stopped reading blocks the writer in a send for as long as its TCP
            # stack lives (the keepalive cannot close it either): interrupt that send.
            if self._sending and self._writer is not None and not self._interrupted:
                self._interrupted = True
                self._writer.cancel()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run_writer(self) -> None:
        """Send events until the connection ends: raises the `ConnectionEnded` saying why."""
        self._writer = asyncio.current_task()
        try:
            await self._write()
        except asyncio.CancelledError:
            if not self._interrupted or self._ended is None or self._writer is None:
                raise
            self._writer.uncancel()
            raise self._ended from None
        finally:
            if self._expiry is not None:
                self._expiry.cancel()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not (self._queue or self._catch_up or self._fill_to is not None or self._ended):
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            if self._ended is not None:
                raise self._ended
            if self._fill_to is not None:
                target, self._fill_to = self._fill_to, None
                await self._fill(target)
            if self._catch_up:
                self._catch_up = False
                await self._fill(None)
            queue = self._queue
            while queue:
                event_id, frame, created_at = queue.popleft()
                self._bytes -= len(frame)
                if event_id != self.delivered + 1:
                    if event_id <= self.delivered:
                        continue
                    await self._fill(event_id - 1)
                    if event_id <= self.delivered:
                        continue
                    if event_id != self.delivered + 1:
                        raise StreamGap(f"events {self.delivered + 1}..{event_id - 1} are gone")
                await self._send_frame(frame)
                self.delivered = event_id
                self._metrics.deliveries.observe(max(0.0, time.time() - created_at))

    async def _fill(self, up_to: int | None) -> None:
        self._metrics.gap_fills.inc()
        while up_to is None or self.delivered < up_to:
            events = await self._read(self.user_id, self.delivered, FILL_PAGE, up_to)
            if not events:
                return
            if events[0].id != self.delivered + 1:
                raise StreamGap(f"events {self.delivered + 1}..{events[0].id - 1} are gone")
            for event in events:
                await self._send_frame(event_frame(event.payload))
                self.delivered = event.id
                self._metrics.deliveries.observe(max(0.0, time.time() - event.created_at))
            if len(events) < FILL_PAGE:
                return

    async def _send_frame(self, frame: str) -> None:
        self._sending = True
        try:
            await self._send(frame)
        finally:
            self._sending = False


def event_frame(payload: bytes) -> str:
    """The `event` frame of a channel payload: `{"type":"event", <the event's own fields>}`."""
    return '{"type":"event",' + payload[1:].decode()
