"""The connections of this process, by user, and the broker subscriptions they need.

A user's channel is subscribed when their first local connection registers and unsubscribed
when the last one leaves (and `presence`, when given, hears of both); every payload from the
broker is encoded once per encoding among the user's connections (a WebSocket frame, an SSE
message) and offered to each of them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping

from hub.broker import CHANNEL, Broker, user_channel
from hub.connection import STREAM, Connection, EventEncoding
from hub.metrics import Metrics
from hub.presence import Presence
from hub.signals import is_signal, signal_frames

log = logging.getLogger("hub.registry")


class _UserConnections:
    """A user's local connections (a list: at most `max_per_user`, most often one) and their
    channel's subscription while it is under way (the finished task, its coroutine and its
    entry in asyncio's task set are let go: an idle user keeps none of them)."""

    __slots__ = ("connections", "subscribed")

    def __init__(self, subscribed: asyncio.Task[None]) -> None:
        self.connections: list[Connection] = []
        self.subscribed: asyncio.Task[None] | None = subscribed
        subscribed.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is None:  # a failure stays for the waiters
            self.subscribed = None


class Registry:
    """Local connections per user. `dispatch` and `resync` are the broker's callbacks."""

    def __init__(self, broker: Broker, metrics: Metrics, channel_prefix: str,
                 max_per_user: int, presence: Presence | None = None) -> None:
        self._broker = broker
        self._metrics = metrics
        self._channel_prefix = channel_prefix
        self._prefix = channel_prefix + CHANNEL
        self._max_per_user = max_per_user
        self._users: dict[int, _UserConnections] = {}
        self._leaving: set[asyncio.Future[None]] = set()
        self._presence = presence
        self._left_delivered: dict[int, int] = {}  # of connections gone since delivered_marks()
        self._stamp: tuple[bytes, float] = (b"", 0.0)  # the last created_at read: a fan-out's events share it

    def channel(self, user_id: int) -> str:
        return user_channel(self._channel_prefix, user_id)

    @property
    def connection_count(self) -> int:
        return sum(len(entry.connections) for entry in self._users.values())

    async def register(self, connection: Connection) -> bool:
        """Add a connection; returns once its channel is subscribed, or False when the user is at
        the per-process connection cap."""
        user_id = connection.user_id
        entry = self._users.get(user_id)
        if entry is None:
            entry = _UserConnections(asyncio.ensure_future(self._broker.subscribe(self.channel(user_id))))
            self._users[user_id] = entry
            if self._presence is not None:
                self._presence.arrived(user_id)
        elif len(entry.connections) >= self._max_per_user:
            return False
        entry.connections.append(connection)
        self._metrics.connections.labels(connection.transport).inc()
        if connection.transport == STREAM:
            self._metrics.stream_connections.inc()
        if entry.subscribed is None:
            return True
        try:
            await asyncio.shield(entry.subscribed)
        except BaseException:
            self.unregister(connection)
            raise
        return True

    def unregister(self, connection: Connection) -> None:
        """Remove a connection; the last one of its user unsubscribes in the background."""
        entry = self._users.get(connection.user_id)
        if entry is None or connection not in entry.connections:
            return
        entry.connections.remove(connection)
        self._metrics.connections.labels(connection.transport).dec()
        if connection.transport == STREAM:
            self._metrics.stream_connections.dec()
        if connection.delivered > self._left_delivered.get(connection.user_id, 0):
            self._left_delivered[connection.user_id] = connection.delivered
        if entry.connections:
            return
        del self._users[connection.user_id]
        if self._presence is not None:
            self._presence.left(connection.user_id)
        task = asyncio.ensure_future(self._unsubscribe(connection.user_id, entry))
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _unsubscribe(self, user_id: int, entry: _UserConnections) -> None:
        try:
            if entry.subscribed is not None:
                await asyncio.shield(entry.subscribed)
        except Exception:
            log.debug("subscribe of user %s had failed", user_id)
        if user_id not in self._users:
            try:
                await self._broker.unsubscribe(self.channel(user_id))
            except Exception:
                log.warning("unsubscribing user %s failed", user_id, exc_info=True)

    def delivered_marks(self) -> dict[int, int]:
        """The newest event id each user's local connections delivered, those that left since
        the last call included (what Web Push counts as seen)."""
        marks, self._left_delivered = self._left_delivered, {}
        for user_id, entry in self._users.items():
            for connection in entry.connections:
                if connection.delivered > marks.get(user_id, 0):
                    marks[user_id] = connection.delivered
        return marks

    def dispatch(self, channel: str, payload: bytes) -> None:
        """Offer one event payload to every local connection of its user (encoded once per
        encoding); a signal payload's frames go to all of them as signals (encoded once per
        encoding too, one write per connection), outside the stream's numbering."""
        if not channel.startswith(self._prefix):
            return
        entry = self._users.get(int(channel[len(self._prefix):]))
        if entry is None:
            return
        if is_signal(payload):
            self._signal(entry, signal_frames(payload), {})
            return
        try:
            event_id = int(payload[6:payload.index(b",", 6)])
            raw = payload[-26:-2]
            if raw == self._stamp[0]:
                created_at = self._stamp[1]
            else:
                created_at = _created_at(raw)
                self._stamp = (raw, created_at)
        except ValueError:
            log.warning("dropping a malformed payload on %s", channel)
            return
        connections = entry.connections
        if len(connections) == 1:
            for connection in connections:
                connection.offer(event_id, connection.encoding.encode(payload), created_at)
            return
        for connection, frame in _per_encoding(connections, lambda encoding: encoding.encode(payload)):
            connection.offer(event_id, frame, created_at)

    def signal_many(self, frames: Mapping[int, list[bytes]]) -> None:
        """Write each user's signal frames (their JSON) to the user's local connections, if
        any; a frame several users get is encoded once per encoding."""
        encoded: dict[EventEncoding, dict[bytes, bytes]] = {}
        users = self._users
        for user_id, parts in frames.items():
            entry = users.get(user_id)
            if entry is not None:
                self._signal(entry, parts, encoded)

    @staticmethod
    def _signal(entry: _UserConnections, parts: list[bytes],
                encoded: dict[EventEncoding, dict[bytes, bytes]]) -> None:
        """One write per connection of the user; `encoded` keeps each frame's encodings."""
        connections = entry.connections
        if len(connections) == 1:  # the usual case
            connection = connections[0]
            connection.signal(_encoded(connection.encoding, parts, encoded), len(parts))
            return
        for connection, signal in _per_encoding(
                connections, lambda encoding: _encoded(encoding, parts, encoded)):
            connection.signal(signal, len(parts))

    def close_sessions(self, revoked: Iterable[tuple[int, str]]) -> None:
        """End the local connections of revoked (user id, session id) pairs with 4001."""
        for user_id, session_id in revoked:
            entry = self._users.get(user_id)
            for connection in list(entry.connections if entry else ()):
                if connection.session_id == session_id:
                    connection.revoke()

    def resync(self) -> None:
        """After a broker reconnect: every connection re-reads what it may have missed."""
        self._metrics.broker_reconnects.inc()
        for entry in self._users.values():
            for connection in entry.connections:
                connection.catch_up()

    def resync_channels(self, channels: Collection[str]) -> None:
        """After the broker lost some channels (a cluster master failing, a slot moving): the
        connections of those users re-read what they may have missed; the others are left be."""
        self._metrics.broker_reconnects.inc()
        for channel in channels:
            if not channel.startswith(self._prefix):
                continue
            entry = self._users.get(int(channel[len(self._prefix):]))
            for connection in entry.connections if entry is not None else ():
                connection.catch_up()


def _created_at(raw: bytes) -> float:
    # payloads end with "created_at":"2026-11-22T10:00:00.123Z"}: `raw` is the time in quotes
    return dt.datetime.fromisoformat(raw.decode()).timestamp()


def _per_encoding(connections: list[Connection], encode: Callable[[EventEncoding], bytes],
                  ) -> Iterator[tuple[Connection, bytes]]:
    """Each of a user's connections with its bytes, `encode` called once per encoding among
    them."""
    done: dict[EventEncoding, bytes] = {}
    for connection in connections:
        encoding = connection.encoding
        data = done.get(encoding)
        if data is None:
            data = done[encoding] = encode(encoding)
        yield connection, data


def _encoded(encoding: EventEncoding, parts: list[bytes],
             encoded: dict[EventEncoding, dict[bytes, bytes]]) -> bytes:
    """Signal frames in `encoding`, back to back, each encoded once per `encoded`."""
    cache = encoded.get(encoding)
    if cache is None:
        cache = encoded[encoding] = {}
    frames = []
    for part in parts:
        frame = cache.get(part)
        if frame is None:
            frame = cache[part] = encoding.encode_signal(part)
        frames.append(frame)
    return frames[0] if len(frames) == 1 else b"".join(frames)
