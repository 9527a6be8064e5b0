"""`chats_of_users` (chat/queries.py), what presence asks when users come and go: every chat of
the given users with all its members, on both backends (PostgreSQL takes the ids as one array
and aggregates the members; SQLite renders an IN list)."""

from __future__ import annotations

from sqlalchemy import insert

from chat import queries
from chat.models import Chat, ChatMember
from hub.db import Database, utcnow
from hub.settings import Settings
from tests.wsutil import make_users


async def test_every_chat_of_the_users_with_all_its_members_ascending(settings: Settings) -> None:
    users = [user for user, _ in await make_users(settings, 6)]
    a, b, c, d, e, lonely = users
    db = Database(settings.database_url)
    db.open()
    try:
        groups = [[c, a, b], [b, d], [d, e], [e]]
        async with db.sessions.begin() as session:
            now = utcnow()
            chats = [(await session.execute(insert(Chat).values(
                title=f"c{i}", created_by=group[0], created_at=now, last_activity_at=now,
                message_count=0).returning(Chat.id))).scalar_one() for i, group in enumerate(groups)]
            await session.execute(insert(ChatMember), [
                {"chat_id": chat, "user_id": user, "joined_at": now, "last_read_message_id": 0,
                 "last_read_seq": 0} for chat, group in zip(chats, groups, strict=True)
                for user in group])
        async with db.sessions() as session:
            assert await queries.chats_of_users(session, {b}) == {
                chats[0]: sorted([a, b, c]), chats[1]: sorted([b, d])}
            assert await queries.chats_of_users(session, [a, e, 10**9]) == {
                chats[0]: sorted([a, b, c]), chats[2]: sorted([d, e]), chats[3]: [e]}
            assert await queries.chats_of_users(session, {lonely}) == {}
            assert await queries.chats_of_users(session, set()) == {}
            # hundreds of ids at once, none of them anyone's but d (the database is shared)
            many = await queries.chats_of_users(session, set(range(10**9, 10**9 + 700)) | {d})
            assert many == {chats[1]: sorted([b, d]), chats[2]: sorted([d, e])}
    finally:
        await db.close()
