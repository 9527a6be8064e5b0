"""Supervised loops stop when cancelled, even when a step turns the cancellation into an error."""

from __future__ import annotations

import asyncio

import pytest

from hub.supervise import supervise


async def test_a_loop_whose_step_swallows_the_cancellation_still_stops() -> None:
    entered = asyncio.Event()
    steps = 0

    async def step() -> None:  # as redis-py does with a read cancelled mid-reply
        nonlocal steps
        steps += 1
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server.") from None

    task = asyncio.create_task(supervise("swallower", step, interval=0.01))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert steps == 1


async def test_a_failing_step_is_retried_and_a_cancelled_loop_stops() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("not yet")

    task = asyncio.create_task(supervise("flaky", step, interval=0.01, cap=0.02))
    async with asyncio.timeout(5):
        while calls < 4:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 4
