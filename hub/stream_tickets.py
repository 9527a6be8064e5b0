"""One-time tickets for the HTTP event stream (protocol §12): `?ticket=` instead of a token in
the URL, for clients that cannot send headers (the browser's EventSource).

A ticket is a random string handed to an authenticated user; it stands for that user's access
token (its user, session and expiry) and works once, within its TTL, on any process of the
deployment: in Redis (`SET ... PX`, taken with `GETDEL`; one key per ticket, so a Redis Cluster
routes each command to the key's master) when the deployment has Redis, else in this process
(the embedded mode runs one process). Only a hash of the ticket is stored, so a
copy of the store holds no usable ticket; tickets themselves are never logged.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from hub.identity import Identity

REDIS_TIMEOUT = 1.0


class TicketStoreError(Exception):
    """The store could not be reached (the caller answers 503)."""


class TicketStore(ABC):
    """Issues and takes tickets. `take` returns the identity at most once per ticket."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    async def issue(self, identity: Identity) -> str:
        """A new ticket for `identity`, valid `ttl` seconds."""
        ticket = secrets.token_urlsafe(32)
        await self._put(_key(ticket), _dump(identity), self.ttl)
        return ticket

    async def take(self, ticket: str) -> Identity | None:
        """The identity of a valid, unused ticket, which is used up now; None otherwise."""
        if not 16 <= len(ticket) <= 128:
            return None
        value = await self._take(_key(ticket))
        return None if value is None else _load(value)

    @abstractmethod
    async def _put(self, key: str, value: str, ttl: float) -> None: ...

    @abstractmethod
    async def _take(self, key: str) -> str | None: ...

    @abstractmethod
    async def close(self) -> None:
        """Release connections (the lifespan calls it at shutdown)."""


class MemoryTicketStore(TicketStore):
    """Tickets in a dict of this process, for the embedded mode (one process). Expired entries
    are swept when the dict has doubled since the last sweep."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl)
        self._clock = clock
        self._tickets: dict[str, tuple[float, str]] = {}
        self._sweep_at = 1024

    async def _put(self, key: str, value: str, ttl: float) -> None:
        now = self._clock()
        self._tickets[key] = (now + ttl, value)
        if len(self._tickets) >= self._sweep_at:
            self._tickets = {k: v for k, v in self._tickets.items() if v[0] > now}
            self._sweep_at = max(1024, 2 * len(self._tickets))

    async def _take(self, key: str) -> str | None:
        entry = self._tickets.pop(key, None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    async def close(self) -> None:
        self._tickets.clear()


class RedisTicketStore(TicketStore):
    """Tickets in Redis under `{prefix}stream_ticket:`, shared by every process on that Redis."""

    def __init__(self, ttl: float, url: str, prefix: str = "", *, cluster: bool = False) -> None:
        super().__init__(ttl)
        from hub.redis_clients import redis_client

        self._redis = redis_client(url, cluster=cluster, socket_timeout=REDIS_TIMEOUT,
                                   socket_connect_timeout=REDIS_TIMEOUT, health_check_interval=30)
        self._prefix = prefix + "stream_ticket:"

    async def _put(self, key: str, value: str, ttl: float) -> None:
        from hub.redis_clients import REDIS_FAILURES

        try:
            await self._redis.set(self._prefix + key, value, px=max(1, math.ceil(ttl * 1000)))
        except REDIS_FAILURES as exc:
            raise TicketStoreError(f"Redis did not store the ticket: {exc}") from None

    async def _take(self, key: str) -> str | None:
        from hub.redis_clients import REDIS_FAILURES

        try:
            value = await self._redis.getdel(self._prefix + key)
        except REDIS_FAILURES as exc:
            raise TicketStoreError(f"Redis did not answer: {exc}") from None
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def close(self) -> None:
        await self._redis.aclose()


def make_ticket_store(ttl: float, redis_url: str | None, prefix: str, *,
                      cluster: bool = False) -> TicketStore:
    """Redis-backed when the deployment has Redis (a ticket works on any process), else in-process."""
    if redis_url is None:
        return MemoryTicketStore(ttl)
    return RedisTicketStore(ttl, redis_url, prefix, cluster=cluster)


def _key(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def _dump(identity: Identity) -> str:
    return f"{identity.user_id} {identity.expires_at!r} {identity.session_id or ''}"


def _load(value: str) -> Identity:
    user_id, expires_at, session_id = value.split(" ", 2)
    return Identity(int(user_id), float(expires_at), session_id or None)
