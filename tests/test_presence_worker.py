"""Presence's worker (hub/presence.py): changes gathered into rounds, the audience a signal can
reach without the broker, and recovery after Redis lost every presence key (a restart without
persistence), on real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from hub.metrics import Metrics
from hub.presence import BUSY_CHANGES, BUSY_ROUND_SECONDS, ROUND_SECONDS, MemoryPresence, Presence
from hub.presence_redis import RedisPresence


async def _until(check: Callable[[], bool | Awaitable[bool]], seconds: float = 5.0) -> None:
    """Wait until `check()` (a plain or an async predicate) holds."""
    async with asyncio.timeout(seconds):
        while True:
            held = check()
            if not isinstance(held, bool):
                held = await held
            if held:
                return
            await asyncio.sleep(0.01)


async def test_changes_that_keep_coming_are_announced_in_rounds() -> None:
    rounds: list[list[int]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        rounds.append(user_ids)

    presence = Presence(MemoryPresence(), Metrics(), grace=0.05)
    presence.listen(listener)
    for user_id in range(1, 11):  # one every 20 ms for 200 ms: two or three rounds of 0.1 s
        presence.arrived(user_id)
        await asyncio.sleep(0.02)

    async def everyone() -> bool:
        return sum(map(len, rounds)) == 10
    await _until(everyone)
    assert sorted(user for users in rounds for user in users) == list(range(1, 11))
    assert rounds[0] == [1]  # the first change of a quiet spell waits for nothing
    assert len(rounds) <= 4
    await presence.close()


async def test_after_a_busy_round_the_next_waits_longer_then_rounds_are_short_again() -> None:
    """A round of BUSY_CHANGES changes or more (a reconnect storm) makes the next one wait
    BUSY_ROUND_SECONDS, so co-members arriving within it reach a member in one message; once
    rounds are small again they are ROUND_SECONDS apart."""
    rounds: list[tuple[float, list[int]]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        rounds.append((time.monotonic(), user_ids))

    presence = Presence(MemoryPresence(), Metrics(), grace=0.05)
    presence.listen(listener)
    storm = list(range(1, BUSY_CHANGES + 1))
    for user_id in storm:  # all at once: one round, at once, and a busy one
        presence.arrived(user_id)
    await _until(lambda: len(rounds) == 1)
    presence.arrived(1000)
    await _until(lambda: len(rounds) == 2)
    assert rounds[0][1] == storm and rounds[1][1] == [1000]
    assert rounds[1][0] - rounds[0][0] >= BUSY_ROUND_SECONDS - 0.01
    presence.arrived(1001)  # that round was small: the next is a short one again
    await _until(lambda: len(rounds) == 3)
    assert rounds[2][0] - rounds[1][0] < BUSY_ROUND_SECONDS - ROUND_SECONDS
    await presence.close()


async def test_a_busy_round_does_not_hold_back_the_settles() -> None:
    """After a busy round the next changes wait BUSY_ROUND_SECONDS, but a user whose grace ends
    meanwhile is settled and announced offline on time."""
    heard: list[tuple[float, int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.extend((time.monotonic(), user_id, online) for user_id in user_ids)

    grace = 0.3
    presence = Presence(MemoryPresence(), Metrics(), grace=grace)
    presence.listen(listener)
    presence.arrived(1)
    await _until(lambda: len(heard) == 1)
    await asyncio.sleep(0.3)
    presence.left(1)  # the first change of a quiet spell: recorded at once
    left = time.monotonic()
    await asyncio.sleep(0.05)
    for user_id in range(2, 2 + BUSY_CHANGES):  # a busy round right after
        presence.arrived(user_id)
    await _until(lambda: (1, False) in [(user, online) for _, user, online in heard])
    offline_at = next(at for at, user, online in heard if (user, online) == (1, False))
    assert grace - 0.01 <= offline_at - left < grace + ROUND_SECONDS + 0.2
    await presence.close()


async def test_the_grace_counts_from_the_last_leaving() -> None:
    """A user who leaves, comes back and leaves again within the grace gets the whole grace
    after the second leaving: a reconnect within it still announces nothing."""
    heard: list[tuple[float, int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.extend((time.monotonic(), user_id, online) for user_id in user_ids)

    grace = 0.6
    presence = Presence(MemoryPresence(), Metrics(), grace=grace)
    presence.listen(listener)
    presence.arrived(1)
    await _until(lambda: len(heard) == 1)
    presence.left(1)
    await asyncio.sleep(0.3)
    presence.arrived(1)
    await asyncio.sleep(0.2)
    presence.left(1)
    await asyncio.sleep(grace - 0.2)  # past the first leaving's grace, within the second's
    presence.arrived(1)  # back within the grace: nothing is announced
    await asyncio.sleep(grace + 2 * ROUND_SECONDS)
    assert [(user, online) for _, user, online in heard] == [(1, True)]
    presence.left(1)
    left = time.monotonic()
    await _until(lambda: len(heard) == 2)
    assert heard[1][1:] == (1, False) and heard[1][0] - left >= grace - 0.01
    await presence.close()


async def test_the_audience_tells_users_held_by_this_process_alone(redis_url: str) -> None:
    prefix = f"test-presence-{uuid.uuid4().hex}:"
    first, second = (Presence(RedisPresence(redis_url, prefix, ttl=5.0), Metrics(), grace=0.05)
                     for _ in range(2))
    memory = Presence(MemoryPresence(), Metrics(), grace=0.05)
    try:
        for presence in (first, second):
            await presence.start()
        memory.arrived(1)

        async def memory_recorded() -> bool:
            return await memory.audience([1, 2]) == ({1}, {1})
        await _until(memory_recorded)  # a hub of one process holds every online user alone

        first.arrived(1)

        async def first_alone() -> bool:
            return await first.audience([1, 2]) == ({1}, {1})
        await _until(first_alone)
        assert await second.audience([1, 2]) == ({1}, set())  # online, but not held there
        second.arrived(1)  # another device on another process: the broker must carry it

        async def both() -> bool:
            return await first.audience([1]) == ({1}, set())
        await _until(both)
        assert await second.audience([1]) == ({1}, set())
        first.left(1)

        async def second_alone() -> bool:
            return await second.audience([1]) == ({1}, {1})
        await _until(second_alone)
        assert await first.audience([1]) == ({1}, set())
    finally:
        for presence in (first, second, memory):
            await presence.close()


async def test_after_redis_lost_every_presence_key_the_heartbeats_restore_it(
        redis_url: str) -> None:
    prefix = f"test-presence-{uuid.uuid4().hex}:"
    heard: list[tuple[int, bool]] = []

    async def listener(user_ids: list[int], online: bool) -> None:
        heard.extend((user_id, online) for user_id in user_ids)

    first, second = (Presence(RedisPresence(redis_url, prefix, ttl=5.0), Metrics(), grace=0.05)
                     for _ in range(2))
    redis = aioredis.from_url(redis_url)
    try:
        for presence in (first, second):
            presence.listen(listener)
            await presence.start()
        first.arrived(1)
        second.arrived(2)

        async def both_online() -> bool:
            return await first.online([1, 2, 3]) == [1, 2]
        await _until(both_online)
        await _until(lambda: len(heard) == 2)
        assert sorted(heard) == [(1, True), (2, True)]

        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        assert keys
        await redis.delete(*keys)  # a Redis restart without persistence
        assert await first.online([1, 2]) == []

        for presence in (first, second):
            await presence.step()  # each finds itself gone and holds its users again
        assert await first.online([1, 2, 3]) == [1, 2]
        assert await first.audience([1, 2]) == ({1, 2}, {1})
        assert await second.audience([1, 2]) == ({1, 2}, {2})
        # what was last announced was lost too: both are announced online once more
        assert sorted(heard) == [(1, True), (1, True), (2, True), (2, True)]

        first.left(1)  # and presence goes on as before
        await _until(lambda: (1, False) in heard)
        assert await second.online([1, 2]) == [2]
    finally:
        for presence in (first, second):
            await presence.close()
        await redis.aclose()
