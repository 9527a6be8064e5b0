"""Supervised background loops: they log, back off with jitter and never die silently."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger("hub.supervise")


def backoff_delay(attempt: int, base: float = 0.1, cap: float = 10.0) -> float:
    """Full-jitter exponential back-off: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 30))))  # noqa: S311


async def supervise(name: str, step: Callable[[], Awaitable[None]], *, interval: float,
                    cap: float = 30.0) -> None:
    """Run `step` every `interval` seconds until cancelled. A failing step is logged with its
    traceback and retried after a jittered back-off that grows up to `cap`; cancellation
    propagates, even when the step turned it into another exception."""
    failures = 0
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # the step swallowed our cancellation (redis-py turns a cancelled read into
                # ConnectionError): stopping must not become a retry that never ends
                raise asyncio.CancelledError from None
            failures += 1
            delay = max(interval, backoff_delay(failures, base=interval, cap=cap))
            log.exception("%s failed (%d in a row); retrying in %.1fs", name, failures, delay)
            await asyncio.sleep(delay)
            continue
        failures = 0
        await asyncio.sleep(interval)
