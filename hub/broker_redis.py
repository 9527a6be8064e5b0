"""The Redis broker: one multiplexed pub/sub connection per process, supervised.

Every local channel shares one SUBSCRIBE connection (never one per socket). The listener
survives Redis restarts: on any connection error it backs off with jitter, reconnects,
subscribes every active channel again and, once Redis has confirmed every one of them, calls
`on_resync` so the hub re-reads from the event store whatever was published while it was away
(a re-read before the confirmations could miss an event published in between). A SUBSCRIBE
left unconfirmed for `SUBSCRIBE_TIMEOUT` counts as a dead connection, which brings the same
reconnect and re-read. Publishing uses a separate pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from hub.broker import Broker, BrokerUnavailable, Deliver
from hub.supervise import backoff_delay

log = logging.getLogger("hub.broker.redis")
SUBSCRIBE_TIMEOUT = 5.0


class RedisBroker(Broker):
    name = "redis"

    def __init__(self, url: str, *, health_check_interval: float = 5.0,
                 client_name: str = "hub-pubsub") -> None:
        self._url = url
        self._health = health_check_interval
        self._client_name = client_name
        self._channels: set[str] = set()
        self._confirm: dict[str, list[asyncio.Future[None]]] = {}
        self._unconfirmed: dict[str, float] = {}  # channel -> when its SUBSCRIBE was sent
        self._resync_due = False
        self._lock = asyncio.Lock()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._on_resync: Callable[[], None] = lambda: None
        self._publisher: aioredis.Redis | None = None
        self._listen_client: aioredis.Redis | None = None
        self._heard = self._pinged = 0.0
        self.reconnects = 0

    async def open(self, deliver: Deliver, on_resync: Callable[[], None]) -> None:
        self._deliver = deliver
        self._on_resync = on_resync
        self._publisher = aioredis.from_url(
            self._url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        self._listen_client = aioredis.from_url(
            self._url, socket_connect_timeout=5, socket_timeout=5, socket_keepalive=True,
            health_check_interval=self._health, retry=Retry(NoBackoff(), 0),
            client_name=self._client_name,  # so CLIENT LIST shows the one pub/sub connection
        )
        try:
            await self._connect()
        except (RedisError, OSError) as exc:
            log.warning("Redis is not reachable yet (%s); the listener keeps trying", exc)
        self._listener = asyncio.create_task(self._listen(), name="redis-broker-listener")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self._drop_pubsub()
        for client in (self._publisher, self._listen_client):
            if client is not None:
                await client.aclose()
        self._publisher = self._listen_client = None

    async def subscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.add(channel)
            pubsub = self._pubsub
            if pubsub is None:
                return  # the listener subscribes it on reconnect, then resyncs
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._confirm.setdefault(channel, []).append(waiter)
            self._unconfirmed.setdefault(channel, loop.time())
            try:
                await pubsub.subscribe(channel)
            except (RedisError, OSError):
                self._confirm.pop(channel, None)
                return  # the listener notices the broken connection and resubscribes
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                await waiter
        except TimeoutError:
            log.warning("no confirmation of SUBSCRIBE %s within %.0fs", channel, SUBSCRIBE_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        async with self._lock:
            self._channels.discard(channel)
            if self._pubsub is not None:
                # on failure the channel went with the connection; it left the set, so it stays gone
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel)

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if self._publisher is None:
            raise BrokerUnavailable("broker is closed")
        try:
            async with self._publisher.pipeline(transaction=False) as pipe:
                for channel, payload in messages:
                    pipe.publish(channel, payload)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def ping(self) -> None:
        if self._publisher is None:
            raise BrokerUnavailable("broker is closed")
        try:
            await self._publisher.ping()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    async def _connect(self) -> None:
        assert self._listen_client is not None
        pubsub = self._listen_client.pubsub()
        async with self._lock:
            channels = sorted(self._channels)
            try:
                if channels:
                    await pubsub.subscribe(*channels)
                else:
                    await pubsub.ping()
            except BaseException:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            self._pubsub = pubsub
            now = asyncio.get_running_loop().time()
            self._heard = self._pinged = now
            self._unconfirmed = dict.fromkeys(channels, now)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        for waiters in self._confirm.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._confirm.clear()
        self._unconfirmed.clear()
        self._resync_due = False
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                delay = backoff_delay(failures, base=0.1, cap=5.0)
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except (RedisError, OSError) as exc:
                    failures += 1
                    log.warning("Redis reconnect failed (attempt %d): %s", failures, exc)
                    await self._drop_pubsub()
                    continue
                failures = 0
                self.reconnects += 1
                log.info("Redis pub/sub reconnected; resubscribing %d channels", len(self._channels))
                self._resync_due = True
                self._resync_when_confirmed()
                continue
            try:
                message = await pubsub.get_message(timeout=1.0)
                await self._check_alive(pubsub, heard=message is not None)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("Redis pub/sub connection lost: %s", exc)
                await self._drop_pubsub()
                failures = 1
                continue
            except Exception:
                log.exception("unexpected error in the Redis listener; reconnecting")
                await self._drop_pubsub()
                failures = 1
                continue
            if message is not None:
                self._handle(message)

    async def _check_alive(self, pubsub: PubSub, heard: bool) -> None:
        """A half-open connection (the peer gone without FIN or RST: a NAT or failover dropping
        it) reads as silence forever. PING every health interval; give the connection up when
        nothing at all came back for three of them."""
        now = asyncio.get_running_loop().time()
        if heard:
            self._heard = now
        elif now - self._heard > 3 * self._health + 1.0:
            raise RedisConnectionError(f"no answer from Redis for {now - self._heard:.1f}s")
        if self._unconfirmed and now - min(self._unconfirmed.values()) > SUBSCRIBE_TIMEOUT:
            raise RedisConnectionError(f"SUBSCRIBE unconfirmed for over {SUBSCRIBE_TIMEOUT:.0f}s")
        if now - self._pinged >= self._health:
            self._pinged = now
            await pubsub.ping()

    def _handle(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        raw_channel = message.get("channel")
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
        if kind == "message":
            data = message.get("data")
            if isinstance(data, bytes) and self._deliver is not None:
                try:
                    self._deliver(channel, data)
                except Exception:
                    log.exception("delivering a message of %s failed", channel)
        elif kind == "subscribe":
            self._unconfirmed.pop(channel, None)
            for waiter in self._confirm.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            self._resync_when_confirmed()

    def _resync_when_confirmed(self) -> None:
        if self._resync_due and not self._unconfirmed:
            self._resync_due = False
            self._on_resync()
