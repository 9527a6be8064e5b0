"""The Redis broker: one multiplexed pub/sub connection per process, supervised.

Every local channel shares one SUBSCRIBE connection (never one per socket). That connection is
a raw RESP socket parsed by hiredis: each message is handed to `deliver` straight from the
socket's read callback, with no task switch and no per-message object beyond the parsed reply,
which is the hub's hottest path. The supervisor survives Redis restarts: on any connection
error it backs off with jitter, reconnects, subscribes every active channel again and, once
Redis has confirmed every one of them, calls `on_resync` so the hub re-reads from the event
store whatever was published while it was away (a re-read before the confirmations could miss
an event published in between). A SUBSCRIBE left unconfirmed for `SUBSCRIBE_TIMEOUT` counts as
a dead connection, which brings the same reconnect and re-read.

Publishing has a connection of its own, the same kind of link: a batch of PUBLISH commands is
written at once and its replies read back together, so batches go out in the order they are
given. A broken or silent publishing link is dropped and opened again by the next publish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from hub.broker import Broker, BrokerUnavailable, Deliver, ResyncChannels
from hub.supervise import backoff_delay

log = logging.getLogger("hub.broker.redis")
SUBSCRIBE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
PUBLISH_TIMEOUT = 5.0  # a publish not answered by then leaves its events to the relay
Reply = Any  # what hiredis parses: bytes, int, list, None or a ReplyError


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str, *, health_check_interval: float = 5.0,
                 client_name: str = "hub-pubsub") -> None:
        self._url = url
        self._health = health_check_interval
        self._client_name = client_name  # so CLIENT LIST shows the one pub/sub connection
        self._publish_name = client_name.removesuffix("-pubsub") + "-publish"
        self._channels: set[str] = set()
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._unconfirmed: dict[str, float] = {}  # channel -> when its SUBSCRIBE was sent
        self._resync_due = False
        self._link: _RespLink | None = None
        self._listener: asyncio.Task[None] | None = None
        self._deliver: Deliver = lambda _channel, _payload: None
        self._on_resync: Callable[[], None] = lambda: None
        self._publisher: _RespLink | None = None
        self._publisher_opening = asyncio.Lock()
        self._closed = False
        self._heard = self._pinged = 0.0
        self.reconnects = 0

    async def open(self, deliver: Deliver, on_resync: Callable[[], None],
                   on_resync_channels: ResyncChannels | None = None) -> None:
        # one connection carries every channel: a reconnect re-reads them all (on_resync)
        self._deliver = deliver
        self._on_resync = on_resync
        self._closed = False
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._connect()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("Redis is not reachable yet (%s); the listener keeps trying", exc)
        self._listener = asyncio.create_task(self._supervise(), name="redis-broker-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        self._drop_link()
        self._closed = True
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        link = self._link
        if link is None:
            return  # the listener subscribes it on reconnect, then resyncs
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._confirm.setdefault(channel, []).append(waiter)
        self._unconfirmed.setdefault(channel, loop.time())
        link.send_soon(b"SUBSCRIBE", channel.encode())
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except TimeoutError:
            log.warning("no confirmation of SUBSCRIBE %s within %.0fs", channel, SUBSCRIBE_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._link is not None:
            # if the connection is broken the channel goes with it; it left the set, so it stays gone
            self._link.send(b"UNSUBSCRIBE", channel.encode())

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if not messages:
            return
        replies = await self._ask([(b"PUBLISH", channel.encode(), payload)
                                   for channel, payload in messages])
        refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if refused is not None:
            raise BrokerUnavailable(f"Redis refused a PUBLISH: {refused}")

    async def ping(self) -> None:
        await self._ask([(b"PING",)])

    async def _ask(self, commands: list[tuple[bytes, ...]]) -> list[Reply]:
        """Commands on the publishing link, (re)opened when needed; their replies, or
        BrokerUnavailable."""
        if self._closed:
            raise BrokerUnavailable("broker is closed")
        link: _RespLink | None = None
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                async with self._publisher_opening:
                    link = self._publisher
                    if link is None or not link.usable:
                        link = self._publisher = await _RespLink.open(
                            self._url, self._publish_name, _unexpected_reply)
                return await link.request(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            if link is not None:
                link.close()  # a reply still owed would answer the next request
            raise BrokerUnavailable(str(exc) or type(exc).__name__) from exc

    async def _connect(self) -> None:
        link = await _RespLink.open(self._url, self._client_name, self._handle)
        # from here to the end nothing awaits: no subscribe() can slip between the snapshot of
        # the channels and the link becoming visible to it
        channels = sorted(self._channels)
        if channels:
            link.send(b"SUBSCRIBE", *(channel.encode() for channel in channels))
        self._link = link
        now = asyncio.get_running_loop().time()
        self._heard = self._pinged = now
        self._unconfirmed = dict.fromkeys(channels, now)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        for waiters in self._confirm.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._confirm.clear()
        self._unconfirmed.clear()
        self._resync_due = False
        if link is not None:
            link.close()

    async def _supervise(self) -> None:
        failures = 0
        while True:
            link = self._link
            if link is None:
                await asyncio.sleep(backoff_delay(failures, base=0.1, cap=5.0))
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await self._connect()
                except (RedisError, OSError, TimeoutError) as exc:
                    failures += 1
                    log.warning("Redis reconnect failed (attempt %d): %s", failures, exc)
                    self._drop_link()
                    continue
                failures = 0
                self.reconnects += 1
                log.info("Redis pub/sub reconnected; resubscribing %d channels", len(self._channels))
                self._resync_due = True
                self._resync_when_confirmed()
                continue
            try:
                await asyncio.wait([link.lost], timeout=min(1.0, self._health))
                if link.lost.done():
                    raise RedisConnectionError(str(link.lost.result() or "closed by Redis"))
                self._check_alive(link)
            except (RedisError, OSError) as exc:
                log.warning("Redis pub/sub connection lost: %s", exc)
                self._drop_link()
                failures = 1
            except Exception:
                log.exception("unexpected error in the Redis listener; reconnecting")
                self._drop_link()
                failures = 1

    def _check_alive(self, link: _RespLink) -> None:
        """A half-open connection (the peer gone without FIN or RST: a NAT or failover dropping
        it) reads as silence forever. PING every health interval; give the connection up when
        nothing at all came back for three of them."""
        now = asyncio.get_running_loop().time()
        if link.heard:
            link.heard = False
            self._heard = now
        elif now - self._heard > 3 * self._health + 1.0:
            raise RedisConnectionError(f"no answer from Redis for {now - self._heard:.1f}s")
        if self._unconfirmed and now - min(self._unconfirmed.values()) > SUBSCRIBE_TIMEOUT:
            raise RedisConnectionError(f"SUBSCRIBE unconfirmed for over {SUBSCRIBE_TIMEOUT:.0f}s")
        if now - self._pinged >= self._health:
            self._pinged = now
            link.send(b"PING")

    def _handle(self, reply: Reply) -> None:
        if not isinstance(reply, list) or len(reply) < 2:
            if isinstance(reply, Exception):
                log.warning("Redis answered the pub/sub connection with an error: %s", reply)
            return
        kind = reply[0]
        if kind == b"message":
            channel = reply[1].decode()
            try:
                self._deliver(channel, reply[2])
            except Exception:
                log.exception("delivering a message of %s failed", channel)
        elif kind == b"subscribe":
            channel = reply[1].decode()
            self._unconfirmed.pop(channel, None)
            for waiter in self._confirm.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            self._resync_when_confirmed()

    def _resync_when_confirmed(self) -> None:
        if self._resync_due and not self._unconfirmed:
            self._resync_due = False
            self._on_resync()


class _Replies:
    __slots__ = ("count", "future", "replies")

    def __init__(self, count: int, future: asyncio.Future[list[Reply]]) -> None:
        self.count = count
        self.future = future
        self.replies: list[Reply] = []


class _RespLink(asyncio.Protocol):
    """One RESP2 connection parsed by hiredis. `request` writes commands at once and resolves
    with their replies, in order; replies nobody asked for (pub/sub messages, SUBSCRIBE
    confirmations, PING answers in subscribe mode) go to `on_push`, from `data_received`."""

    def __init__(self, on_push: Callable[[Reply], None]) -> None:
        self._parser = hiredis.Reader()
        self._on_push = on_push
        self._waiting: deque[_Replies] = deque()
        self._transport: asyncio.Transport | None = None
        self._corked: list[bytes] | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.heard = False

    @classmethod
    async def open(cls, url: str, client_name: str, on_push: Callable[[Reply], None]) -> _RespLink:
        """Connect, authenticate and name the connection; raises RedisError or OSError."""
        options: dict[str, Any] = dict(parse_url(url))
        loop = asyncio.get_running_loop()
        link = cls(on_push)
        if "path" in options:
            await loop.create_unix_connection(lambda: link, options["path"])
        else:
            await loop.create_connection(lambda: link, options.get("host", "localhost"),
                                         options.get("port", 6379), ssl=_tls(url, options))
        try:
            commands: list[tuple[bytes, ...]] = []
            if options.get("password") is not None:
                user = options.get("username")
                commands.append((b"AUTH", *([user.encode()] if user else []),
                                 options["password"].encode()))
            commands.append((b"CLIENT", b"SETNAME", client_name.encode()))
            for command, answer in zip(commands, await link.request(commands), strict=True):
                if isinstance(answer, Exception):
                    error = AuthenticationError if command[0] == b"AUTH" else RedisConnectionError
                    raise error(f"{command[0].decode()}: {answer}")
        except BaseException:
            link.close()
            raise
        return link

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def request(self, commands: Sequence[tuple[bytes, ...]]) -> asyncio.Future[list[Reply]]:
        replies: asyncio.Future[list[Reply]] = asyncio.get_running_loop().create_future()
        transport = self._transport
        if transport is None or transport.is_closing():
            replies.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return replies
        self._uncork()  # what was sent before goes first
        self._waiting.append(_Replies(len(commands), replies))
        transport.write(b"".join(_command(command) for command in commands))
        return replies

    def send(self, *args: bytes) -> None:
        """Write a command whose reply goes to `on_push` now (after those given to `send_soon`)."""
        self._uncork()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_command(args))

    def send_soon(self, *args: bytes) -> None:
        """`send` at the end of this turn of the event loop, in one write with every command
        sent so meanwhile (a burst of connecting sockets' SUBSCRIBEs), in order."""
        if self._corked is None:
            self._corked = []
            asyncio.get_running_loop().call_soon(self._uncork)
        self._corked.append(_command(args))

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        transport = self._transport
        if corked and transport is not None and not transport.is_closing():
            transport.write(b"".join(corked))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self.heard = True
        parser = self._parser
        parser.feed(data)
        waiting = self._waiting
        try:
            while (reply := parser.gets()) is not False:
                if not waiting:
                    self._on_push(reply)
                    continue
                batch = waiting[0]
                batch.replies.append(reply)
                if len(batch.replies) == batch.count:
                    waiting.popleft()
                    if not batch.future.done():
                        batch.future.set_result(batch.replies)
        except hiredis.ProtocolError as exc:
            log.warning("unreadable reply from Redis: %s", exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.lost.done():
            self.lost.set_result(exc)
        while self._waiting:
            batch = self._waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(RedisConnectionError("the connection to Redis was lost"))


def _unexpected_reply(reply: Reply) -> None:
    log.warning("unexpected reply on the publishing connection: %r", reply)


def _command(args: tuple[bytes, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


def _tls(url: str, options: dict[str, Any]) -> ssl.SSLContext | None:
    """TLS for `rediss://` URLs: the system's CAs or `ssl_ca_certs`, verification unless
    `ssl_cert_reqs=none` (redis-py's query parameters, so both connections agree)."""
    if not url.startswith("rediss://"):
        return None
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if str(options.get("ssl_cert_reqs", "required")).lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
