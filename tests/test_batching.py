"""The batcher (`hub.batching.Batcher`, the group commit behind publishes) on its own: grouping in
arrival order, one result per call, failures per batch, weight limits, callers giving up,
regrouping and cancellation. Batches are released by hand; no database, no sleeps."""

from __future__ import annotations

import asyncio

import pytest

from hub.batching import Batcher

WAIT = 5.0


class Runner:
    """A batch function that records each batch and waits for the test to release it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail: set[str] = set()
        self.released = 0

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await self.release.wait()
        self.release.clear()
        if self.fail & set(items):
            raise RuntimeError(f"batch {items} failed")
        return [item.upper() for item in items]

    async def let_through(self, batches: int) -> None:
        """Release the next `batches` batches, each once it has started."""
        for _ in range(batches):
            self.released += 1
            await until(lambda: len(self.batches) >= self.released)
            self.release.set()
            await until(lambda: not self.release.is_set())


async def until(condition: object) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0)


async def test_calls_arriving_during_a_batch_go_together_in_the_next_in_arrival_order() -> None:
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test")
    first = asyncio.create_task(batcher.submit("a"))
    await until(lambda: run.batches == [["a"]])
    rest = [asyncio.create_task(batcher.submit(item)) for item in ("b", "c", "d")]
    await asyncio.sleep(0)
    await run.let_through(2)
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(first, *rest) == ["A", "B", "C", "D"]
    assert run.batches == [["a"], ["b", "c", "d"]]


async def test_a_failing_batch_fails_each_of_its_calls_and_the_next_batch_runs() -> None:
    run = Runner()
    run.fail = {"b"}
    batcher: Batcher[str, str] = Batcher(run, "test")
    first = asyncio.create_task(batcher.submit("a"))
    await until(lambda: len(run.batches) == 1)
    failing = [asyncio.create_task(batcher.submit(item)) for item in ("b", "c")]
    await asyncio.sleep(0)
    await run.let_through(2)
    later = asyncio.create_task(batcher.submit("e"))
    await run.let_through(1)
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(first, *failing, later, return_exceptions=True)
    assert results[0] == "A" and results[3] == "E"
    assert [str(r) for r in results[1:3]] == ["batch ['b', 'c'] failed"] * 2


async def test_a_batch_stops_growing_once_its_weight_reaches_the_limit() -> None:
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test", weight=len, limit=4)
    first = asyncio.create_task(batcher.submit("x"))
    await until(lambda: len(run.batches) == 1)
    waiting = [asyncio.create_task(batcher.submit(item)) for item in ("aa", "bb", "c", "dddddd", "e")]
    await asyncio.sleep(0)
    await run.let_through(4)
    async with asyncio.timeout(WAIT):
        await asyncio.gather(first, *waiting)
    # a batch takes items until their weight reaches 4; an item heavier than the limit goes alone
    assert run.batches == [["x"], ["aa", "bb"], ["c", "dddddd"], ["e"]]


async def test_a_caller_that_gives_up_does_not_take_its_item_back() -> None:
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test")
    first = asyncio.create_task(batcher.submit("a"))
    await until(lambda: len(run.batches) == 1)
    impatient = asyncio.create_task(batcher.submit("b"))
    patient = asyncio.create_task(batcher.submit("c"))
    await asyncio.sleep(0)
    impatient.cancel()
    await run.let_through(2)
    async with asyncio.timeout(WAIT):
        assert list(await asyncio.gather(first, patient)) == ["A", "C"]
        await batcher.wait_idle()
    assert run.batches == [["a"], ["b", "c"]]  # the cancelled caller's item still ran
    assert impatient.cancelled()


async def test_wait_idle_returns_once_every_submitted_item_has_run() -> None:
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test")
    await batcher.wait_idle()  # nothing submitted yet
    calls = [asyncio.create_task(batcher.submit(item)) for item in ("a", "b")]
    idle = asyncio.create_task(batcher.wait_idle())
    await until(lambda: len(run.batches) == 1)
    assert not idle.done()
    await run.let_through(1)
    async with asyncio.timeout(WAIT):
        await idle
    assert all(call.done() for call in calls)


async def test_cancelling_the_batch_task_cancels_the_calls_of_its_batch() -> None:
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test")
    calls = [asyncio.create_task(batcher.submit(item)) for item in ("a", "b")]
    await until(lambda: len(run.batches) == 1)
    assert batcher._task is not None
    batcher._task.cancel()  # the process is shutting down
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    late = asyncio.create_task(batcher.submit("c"))  # a new task starts for later calls
    await run.let_through(1)
    async with asyncio.timeout(WAIT):
        assert await late == "C"


@pytest.mark.parametrize("limit", [None, 1])
async def test_one_call_alone_runs_at_once(limit: int | None) -> None:
    run = Runner()
    run.release.set()
    batcher: Batcher[str, str] = Batcher(run, "test", limit=limit)
    async with asyncio.timeout(WAIT):
        assert await batcher.submit("a") == "A"


async def test_with_regroup_callers_of_the_last_batch_coming_back_go_together() -> None:
    """A closed loop of three callers: once answered, the first to come back waits for the
    other two instead of going alone (the window is long, so only the grouping is tested)."""
    run = Runner()
    batcher: Batcher[str, str] = Batcher(run, "test", regroup=60.0)
    first = [asyncio.create_task(batcher.submit(item)) for item in ("a", "b", "c")]
    await run.let_through(1)
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*first) == ["A", "B", "C"]
    again = [asyncio.create_task(batcher.submit("d"))]
    for _ in range(5):
        await asyncio.sleep(0)
    assert run.batches == [["a", "b", "c"]]  # "d" waits for as many as the last batch had
    again += [asyncio.create_task(batcher.submit(item)) for item in ("e", "f")]
    await run.let_through(1)
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*again) == ["D", "E", "F"]
    assert run.batches == [["a", "b", "c"], ["d", "e", "f"]]


async def test_with_regroup_a_call_alone_still_runs_once_the_window_ends() -> None:
    run = Runner()
    run.release.set()
    batcher: Batcher[str, str] = Batcher(run, "test", regroup=0.05)
    async with asyncio.timeout(WAIT):
        assert await asyncio.gather(*(batcher.submit(item) for item in ("a", "b"))) == ["A", "B"]
        run.release.set()
        assert await batcher.submit("c") == "C"
    assert run.batches == [["a", "b"], ["c"]]
