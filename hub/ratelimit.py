"""Rate limits shared by every REST call that needs one: a token bucket per key, kept in this
process (no REDIS_URL) or in Redis (shared by every process of a deployment).

Both implementations run GCRA (the generic cell rate algorithm, a token bucket kept as one
timestamp per key): a key starts with `burst` tokens and gains `rate` tokens a second up to
`burst` again. A limit of "N per window" is the bucket `burst=N, rate=N/window`: N at once,
then one every window/N. A refused hit says how long until one token is back, and that is
exactly when the next hit of the same cost is allowed: `Retry-After` is that time rounded up.

The Redis limiter fails open: when Redis cannot be reached within a short timeout, the hit is
allowed and a warning logged (at most once a minute), so that a Redis outage degrades abuse
protection instead of locking every user out of logging in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from hub.errors import RateLimited
from hub.metrics import Metrics

log = logging.getLogger("hub.ratelimit")
REDIS_TIMEOUT = 0.5  # seconds a hit waits for Redis before it fails open
WARN_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    """A named bucket shape: `name` labels the metric and namespaces the keys."""

    name: str
    rate: float  # tokens gained per second
    burst: int  # tokens held at most

    @classmethod
    def per(cls, name: str, count: int, seconds: float) -> Limit:
        """`count` hits per `seconds`: a bucket of `count` refilled over `seconds`."""
        return cls(name, count / seconds, count)


def auth_attempts(per_minute: int) -> Limit:
    """The per-address limit shared by register, login, refresh and stream tickets
    (`AUTH_RATE_LIMIT`)."""
    return Limit.per("auth", per_minute, 60.0)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after: float  # seconds until a hit of the same cost is allowed; 0 when allowed

    @property
    def retry_after_header(self) -> int:
        """Whole seconds for `Retry-After`, never early (rounded up, at least 1)."""
        return max(1, math.ceil(self.retry_after - 1e-6))


class RateLimiter(ABC):
    """A token bucket per key. `hit` takes `cost` tokens when they are there (a negative cost
    gives tokens back, e.g. a failed-login slot returned after a success) and never blocks for
    longer than its store's timeout."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    @abstractmethod
    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        """Take `cost` tokens from `key`'s bucket if it holds them; say when otherwise."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections (the lifespan calls it at shutdown)."""

    async def enforce(self, limit: Limit, subject: str, detail: str) -> None:
        """Take one token of `limit` for `subject`, or raise 429 `rate_limited` with a true
        `Retry-After` (and count it in `hub_rate_limited_total{limit}`)."""
        decision = await self.hit(f"{limit.name}:{subject}", limit.rate, limit.burst)
        if not decision.allowed:
            self._metrics.rate_limited.labels(limit.name).inc()
            seconds = decision.retry_after_header
            raise RateLimited(f"{detail}; retry in {seconds} s", seconds)

    async def give_back(self, limit: Limit, subject: str) -> None:
        """Return the token `enforce` took (the attempt turned out not to count)."""
        await self.hit(f"{limit.name}:{subject}", limit.rate, limit.burst, cost=-1)


def gcra(tat: float, now: float, rate: float, burst: int, cost: int) -> tuple[Decision, float]:
    """One GCRA step on a bucket whose theoretical arrival time is `tat` (<= `now`: full).
    Returns the decision and the new `tat` (unchanged when refused)."""
    interval = 1.0 / rate
    new_tat = max(max(tat, now) + cost * interval, now)
    wait = new_tat - now - burst * interval
    if wait > 1e-9:
        return Decision(False, wait), tat
    return Decision(True, 0.0), new_tat


class MemoryRateLimiter(RateLimiter):
    """Buckets in a dict of this process, for the embedded mode. Full buckets are swept when the
    dict has doubled since the last sweep, so keys sprayed by a client do not pile up."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(metrics)
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._sweep_at = 1024

    async def close(self) -> None:
        self._tats.clear()

    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        now = self._clock()
        decision, tat = gcra(self._tats.get(key, now), now, rate, burst, cost)
        if tat > now:
            self._tats[key] = tat
        else:
            self._tats.pop(key, None)
        if len(self._tats) >= self._sweep_at:
            self._tats = {k: t for k, t in self._tats.items() if t > now}
            self._sweep_at = max(1024, 2 * len(self._tats))
        return decision


# KEYS[1] the bucket; ARGV: seconds per token, tokens held at most, cost. Redis's own clock, so
# that every process of a deployment agrees on it. Returns {allowed, wait in µs as a string}.
GCRA_SCRIPT = """
local interval = tonumber(ARGV[1]) * 1000000
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
if new_tat < now then new_tat = now end
local wait = new_tat - now - burst * interval
if wait > 0.5 then return {0, string.format('%.0f', wait)} end
if new_tat > now then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {1, '0'}
"""


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis under `{prefix}ratelimit:`, one atomic script call per hit, shared by
    every process on that Redis. Fails open (see the module docstring). On a Redis Cluster the
    script's one key routes it to the key's master."""

    def __init__(self, metrics: Metrics, url: str, prefix: str = "", *, cluster: bool = False) -> None:
        super().__init__(metrics)
        from hub.redis_clients import redis_client

        self._redis = redis_client(url, cluster=cluster, socket_timeout=REDIS_TIMEOUT * 2,
                                   socket_connect_timeout=REDIS_TIMEOUT * 2,
                                   health_check_interval=30)
        self._script = self._redis.register_script(GCRA_SCRIPT)
        self._prefix = prefix + "ratelimit:"
        self._warned_at = -math.inf

    async def close(self) -> None:
        await self._redis.aclose()

    async def hit(self, key: str, rate: float, burst: int, cost: int = 1) -> Decision:
        from hub.redis_clients import REDIS_FAILURES

        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                allowed, wait = await self._script(keys=[self._prefix + key],
                                                   args=[repr(1.0 / rate), burst, cost])
        except REDIS_FAILURES as exc:
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning("rate limits are not enforced: Redis did not answer (%s)", exc)
            return Decision(True, 0.0)
        return Decision(bool(allowed), int(wait) / 1e6)


def make_rate_limiter(metrics: Metrics, redis_url: str | None, prefix: str, *,
                      cluster: bool = False) -> RateLimiter:
    """Redis-backed when the deployment has Redis (limits hold across processes), else in-process."""
    if redis_url is None:
        return MemoryRateLimiter(metrics)
    return RedisRateLimiter(metrics, redis_url, prefix, cluster=cluster)


def client_address(request: Request) -> str:
    """The address a limit counts the caller under: the peer, or the address forwarded by a peer
    in `TRUSTED_PROXIES` (uvicorn's proxy-headers middleware has already put it in
    `request.client`). An IPv6 address counts as its /64, the block one subscriber gets."""
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
