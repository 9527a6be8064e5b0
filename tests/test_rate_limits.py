"""Abuse limits of §3: sign-in attempts per client address, failed logins per username, shared
by every process of a deployment; the limiter's two implementations behind one contract."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from hub.metrics import Metrics
from hub.ratelimit import Limit, MemoryRateLimiter, RateLimiter, RedisRateLimiter
from hub.settings import Settings
from tests.conftest import RUN_ID, RunningHub, free_port, register, serve_hub, unique_name
from tests.test_processes import hub_process

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
JUNK_REFRESH = {"refresh_token": "not-a-token"}


def _assert_rate_limited(response: httpx.Response, at_most: float) -> int:
    """A 429 in the contract's shape; its Retry-After in whole seconds, 1..ceil(at_most)."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= math.ceil(at_most), retry_after
    return retry_after


def _limited(settings: Settings, **changes: object) -> Settings:
    """`settings` with `changes`, and Redis keys of this test alone (buckets outlive a hub)."""
    prefix = f"{settings.redis_channel_prefix}{unique_name('rl')}:"
    return replace(settings, redis_channel_prefix=prefix, **changes)  # type: ignore[arg-type]


# -- the limiter itself, in-process and on Redis -------------------------------------------------

@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(Metrics())
        return
    redis_limiter = RedisRateLimiter(Metrics(), redis_url, f"test{RUN_ID}:{unique_name('rl')}:")
    yield redis_limiter
    await redis_limiter.close()


async def test_a_bucket_refuses_beyond_its_burst_and_says_when_truthfully(limiter: RateLimiter) -> None:
    async with asyncio.timeout(10):
        for _ in range(3):
            assert (await limiter.hit("k", rate=4.0, burst=3)).allowed
        refused = await limiter.hit("k", rate=4.0, burst=3)
        assert not refused.allowed
        assert 0 < refused.retry_after <= 0.25
        assert not (await limiter.hit("k", rate=4.0, burst=3)).allowed  # a refusal takes nothing
        await asyncio.sleep(refused.retry_after + 0.02)
        assert (await limiter.hit("k", rate=4.0, burst=3)).allowed  # allowed when it said
        assert not (await limiter.hit("k", rate=4.0, burst=3)).allowed
        assert (await limiter.hit("other", rate=4.0, burst=3)).allowed  # keys are independent


async def test_a_token_given_back_can_be_taken_again(limiter: RateLimiter) -> None:
    async with asyncio.timeout(10):
        limit = Limit.per("gb", 2, 3600)
        await limiter.enforce(limit, "x", "detail")
        await limiter.enforce(limit, "x", "detail")
        await limiter.give_back(limit, "x")
        await limiter.enforce(limit, "x", "detail")
        with pytest.raises(Exception, match="retry in") as raised:
            await limiter.enforce(limit, "x", "detail")
        assert raised.value.headers == {"Retry-After": "1800"}  # type: ignore[attr-defined]


def test_memory_limiter_on_a_clock_sweeps_full_buckets() -> None:
    now = [1000.0]
    limiter = MemoryRateLimiter(Metrics(), clock=lambda: now[0])

    async def run() -> None:
        for i in range(5000):
            assert (await limiter.hit(f"k{i}", rate=1.0, burst=5)).allowed
        now[0] += 10  # every bucket is full again: the next sweep drops them
        for i in range(4000):
            assert (await limiter.hit(f"new{i}", rate=1.0, burst=5)).allowed
        assert (await limiter.hit("fresh", rate=1.0, burst=5)).allowed
        decision = None
        for _ in range(6):
            decision = await limiter.hit("fresh", rate=1.0, burst=5)
        assert decision is not None and not decision.allowed
        assert decision.retry_after == pytest.approx(1.0)

    asyncio.run(run())
    assert "k0" not in limiter._tats  # the sweep is the point
    assert len(limiter._tats) <= 4001


async def test_redis_limiter_fails_open_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RedisRateLimiter(Metrics(), f"redis://127.0.0.1:{free_port()}/0")
    try:
        with caplog.at_level(logging.WARNING, logger="hub.ratelimit"):
            async with asyncio.timeout(10):
                for _ in range(3):
                    assert (await limiter.hit("k", rate=0.001, burst=1)).allowed
        warnings = [r for r in caplog.records if "not enforced" in r.getMessage()]
        assert len(warnings) == 1  # once, not per request
    finally:
        await limiter.close()


# -- sign-in attempts per address ---------------------------------------------------------------

async def test_register_login_refresh_share_the_address_budget(settings: Settings) -> None:
    async with serve_hub(_limited(settings, auth_rate_limit=3)) as hub, asyncio.timeout(60):
        name = unique_name("rl")
        started = time.monotonic()
        credentials = {"username": name, "password": "pw-long-enough"}
        assert (await hub.http.post(REGISTER, json=credentials)).status_code == 201
        assert (await hub.http.post(LOGIN, json=credentials)).status_code == 200
        assert (await hub.http.post(REFRESH, json=JUNK_REFRESH)).status_code == 401
        for url, body in ((REGISTER, {"username": unique_name(), "password": "pw-long-enough"}),
                          (LOGIN, {"username": name, "password": "pw-long-enough"}),
                          (REFRESH, JUNK_REFRESH), (LOGIN, {"junk": True})):
            # 3 a minute: the next one is due 20 s after the first
            _assert_rate_limited(await hub.http.post(url, json=body), 20 - (time.monotonic() - started) + 1)
        metrics = (await hub.http.get("/metrics")).text
        assert 'hub_rate_limited_total{limit="auth"} 4.0' in metrics


async def test_retry_after_is_when_the_next_attempt_is_allowed(settings: Settings) -> None:
    async with serve_hub(_limited(settings, auth_rate_limit=60)) as hub, asyncio.timeout(60):
        for _ in range(200):
            response = await hub.http.post(REFRESH, json=JUNK_REFRESH)
            if response.status_code == 429:
                break
            assert response.status_code == 401
        retry_after = _assert_rate_limited(response, 1)
        await asyncio.sleep(retry_after)
        assert (await hub.http.post(REFRESH, json=JUNK_REFRESH)).status_code == 401


async def test_forwarded_address_counts_only_behind_a_trusted_proxy(settings: Settings) -> None:
    async def spent_after_other_addresses(hub: RunningHub) -> int:
        statuses = []
        for n in range(4):
            response = await hub.http.post(REFRESH, json=JUNK_REFRESH,
                                           headers={"X-Forwarded-For": f"198.51.100.{n}"})
            statuses.append(response.status_code)
        return statuses.count(429)

    untrusted = _limited(settings, auth_rate_limit=2, trusted_proxies=())
    async with serve_hub(untrusted) as hub, asyncio.timeout(30):
        assert await spent_after_other_addresses(hub) == 2  # all from 127.0.0.1: forgery ignored
    trusted = _limited(settings, auth_rate_limit=2, trusted_proxies=("127.0.0.0/8",))
    async with serve_hub(trusted) as hub, asyncio.timeout(30):
        assert await spent_after_other_addresses(hub) == 0  # four clients behind the proxy


# -- failed logins per username -----------------------------------------------------------------

async def test_failed_logins_per_username(settings: Settings) -> None:
    limited = _limited(settings, login_failure_limit=3, login_failure_window=60)
    async with serve_hub(limited) as hub, asyncio.timeout(90):
        victim, bystander = await register(hub.http), await register(hub.http)
        for _ in range(4):  # successes do not count
            ok = await hub.http.post(LOGIN, json={"username": victim.username, "password": victim.password})
            assert ok.status_code == 200
        started = time.monotonic()
        for _ in range(3):
            wrong = await hub.http.post(LOGIN, json={"username": victim.username.upper(),
                                                     "password": "wrong-pw"})
            assert wrong.status_code == 401
        due = 20 - (time.monotonic() - started) + 1  # 3 a minute: one back 20 s after the first
        _assert_rate_limited(await hub.http.post(
            LOGIN, json={"username": victim.username, "password": "wrong-pw"}), due)
        # the right password waits too (the guesser must not learn it), other accounts do not
        _assert_rate_limited(await hub.http.post(
            LOGIN, json={"username": victim.username, "password": victim.password}), due)
        other = await hub.http.post(LOGIN, json={"username": bystander.username,
                                                 "password": bystander.password})
        assert other.status_code == 200
        metrics = (await hub.http.get("/metrics")).text
        assert 'hub_rate_limited_total{limit="login_failures"} 2.0' in metrics


# -- across processes ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["postgres"])
async def test_limits_hold_across_two_hub_processes(settings: Settings) -> None:
    env = {"AUTH_RATE_LIMIT": "4",
           "REDIS_CHANNEL_PREFIX": f"test{RUN_ID}:{unique_name('procs')}:"}
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(90):
        _, first = await stack.enter_async_context(hub_process(settings, env=env))
        _, second = await stack.enter_async_context(hub_process(settings, env=env))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        statuses = [(await http.post(base + REFRESH, json=JUNK_REFRESH)).status_code
                    for base in (first, second, first, second)]
        assert statuses == [401] * 4
        for base in (first, second):
            _assert_rate_limited(await http.post(base + REFRESH, json=JUNK_REFRESH), 16)


# -- chat posting per user ----------------------------------------------------------------------

async def test_chat_posting_per_user_rate_and_burst(settings: Settings) -> None:
    async with serve_hub(_limited(settings, chat_post_rate=2.0, chat_post_burst=3)) as hub, \
            asyncio.timeout(60):
        poster, other = await register(hub.http), await register(hub.http)
        created = await hub.http.post("/api/v1/chats", headers=poster.headers,
                                      json={"title": "limits", "member_ids": [other.id]})
        assert created.status_code == 201, created.text
        messages = f"/api/v1/chats/{created.json()['id']}/messages"
        for n in range(3):
            posted = await hub.http.post(messages, headers=poster.headers, json={"text": f"m{n}"})
            assert posted.status_code == 201, posted.text
        refused = await hub.http.post(messages, headers=poster.headers, json={"text": "one too many"})
        retry_after = _assert_rate_limited(refused, 0.5)  # 2 a second: one back within 0.5 s
        answer = await hub.http.post(messages, headers=other.headers, json={"text": "mine"})
        assert answer.status_code == 201  # the limit is the poster's own
        await asyncio.sleep(retry_after)
        later = await hub.http.post(messages, headers=poster.headers, json={"text": "later"})
        assert later.status_code == 201
        page = await hub.http.get(messages, headers=poster.headers)
        assert [m["text"] for m in page.json()["items"]] == ["later", "mine", "m2", "m1", "m0"]
        metrics = (await hub.http.get("/metrics")).text
        assert 'hub_rate_limited_total{limit="chat_post"} 1.0' in metrics
