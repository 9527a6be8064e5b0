"""Merged stream reads on both databases: the heads and event pages many sockets ask for at
once come back as each socket's own read would have given them, from few statements."""

from __future__ import annotations

import asyncio

from hub import streams
from hub.db import Database
from hub.stream_reads import Merged, StreamReads
from hub.users import create_user
from tests.conftest import unique_name

UNKNOWN = 2**31 - 7


async def _users_with_events(db: Database, counts: list[int]) -> list[int]:
    async with db.sessions.begin() as session:
        users = [(await create_user(session, unique_name("r"))).id for _ in counts]
        for round_ in range(max(counts)):
            chosen = [user for user, count in zip(users, counts, strict=True) if count > round_]
            await streams.append(session, chosen, f"e{round_ + 1}", b'{"r":%d}' % (round_ + 1))
    return users


async def test_merged_reads_answer_each_caller_as_its_own_read_would(db: Database) -> None:
    empty, three, ten = await _users_with_events(db, [0, 3, 10])
    reads = StreamReads(db)
    async with asyncio.timeout(30):
        heads = await asyncio.gather(*(reads.head(user) for user in (ten, UNKNOWN, empty, three, ten)))
        pages = await asyncio.gather(
            reads.events(ten, 2, 3, None), reads.events(ten, 0, 100, 4), reads.events(three, 0, 100, None),
            reads.events(empty, 0, 100, None), reads.events(UNKNOWN, 0, 10, None),
            reads.events(ten, 9, 100, 20))
    async with db.sessions() as session:
        alone = [await streams.head(session, user) for user in (ten, UNKNOWN, empty, three, ten)]
        expected = [await streams.read(session, user, after, limit, up_to) for user, after, limit, up_to in (
            (ten, 2, 3, None), (ten, 0, 100, 4), (three, 0, 100, None), (empty, 0, 100, None),
            (UNKNOWN, 0, 10, None), (ten, 9, 100, 20))]
    assert heads == alone
    assert heads[1] is None
    assert [head.last_id for head in heads if head is not None] == [10, 0, 3, 10]
    assert pages == expected
    assert [[e.id for e in page] for page in pages] == [[3, 4, 5], [1, 2, 3, 4], [1, 2, 3], [], [], [10]]
    assert pages[0][0].payload.startswith(b'{"id":3,"name":"e3","data":{"r":3},"created_at":"')


async def test_requests_asked_for_together_go_in_one_batch_of_at_most_max_batch() -> None:
    batches: list[list[int]] = []

    async def run(requests: list[int]) -> list[int]:
        batches.append(requests)
        await asyncio.sleep(0)
        return [2 * request for request in requests]

    merged: Merged[int, int] = Merged(run, max_batch=20)
    async with asyncio.timeout(10):
        assert await asyncio.gather(*(merged.ask(n) for n in range(50))) == [2 * n for n in range(50)]
    assert batches == [list(range(20)), list(range(20, 40)), list(range(40, 50))]


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    async def run(requests: list[int]) -> list[int]:
        raise ConnectionError("database gone")

    merged: Merged[int, int] = Merged(run)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*(merged.ask(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)


async def test_a_reader_that_gives_up_leaves_the_others_their_answers(db: Database) -> None:
    first, second = await _users_with_events(db, [1, 2])
    reads = StreamReads(db)
    async with asyncio.timeout(30):
        abandoned = asyncio.ensure_future(reads.events(first, 0, 10, None))
        kept = asyncio.ensure_future(reads.events(second, 0, 10, None))
        abandoned.cancel()
        assert [e.id for e in await kept] == [1, 2]
        assert [e.id for e in await reads.events(first, 0, 10, None)] == [1]
