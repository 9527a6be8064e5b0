"""Batching of concurrent calls behind one task (group commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Calls that arrive while a batch is in flight wait and go together in the next one, in
    the order they arrived: one task, started when needed, runs the batches one after another.
    `run` takes a batch's items and returns one result per item; if it raises, every call of
    that batch raises it. A batch stops growing once its items' `weight` reaches `limit`.

    With `regroup` (seconds), a batch that would start with fewer items than the previous one,
    less than `regroup` after that one ended, first waits for as many, at most until then. N
    callers in a closed loop (each calls again once answered: a backend's pool of workers) come
    back a moment apart; without the wait the first would go alone and the others would all
    wait a whole batch behind it, two batches for N calls instead of one."""

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], name: str,
                 weight: Callable[[T], int] = lambda _item: 1, limit: int | None = None,
                 regroup: float = 0.0) -> None:
        self._run = run
        self._name = name
        self._weight = weight
        self._limit = limit
        self._regroup = regroup
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_size = 0  # items of the last batch run
        self._last_end = 0.0  # when it ended (loop time)
        self._enough: asyncio.Future[None] | None = None  # set once as many are pending again

    async def submit(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._enough is not None and len(self._pending) >= self._last_size and not self._enough.done():
            self._enough.set_result(None)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self._name)
        # a caller that gives up cancels `done` only: its item stays queued and runs
        return await done

    async def wait_idle(self) -> None:
        """Until every item submitted so far has been run."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        taken = len(self._pending)
        if self._limit is not None:
            taken, weight = 0, 0
            while taken < len(self._pending) and (not taken or weight < self._limit):
                weight += self._weight(self._pending[taken][0])
                taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _regather(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._last_end + self._regroup
        if len(self._pending) >= self._last_size or loop.time() >= deadline:
            return
        self._enough = loop.create_future()
        try:
            async with asyncio.timeout_at(deadline):
                await self._enough
        except TimeoutError:
            pass
        finally:
            self._enough = None

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self._regroup:
                await self._regather()
            batch = self._take()
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except BaseException:
                for _, done in batch:
                    done.cancel()
                raise
            finally:
                self._last_size, self._last_end = len(batch), loop.time()
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
