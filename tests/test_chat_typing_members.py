"""Typing reads a chat's members from a short cache (chat/live.py): a typing user costs one
membership query per `members_ttl`, not one per frame, and a change of members is seen at once
(a new member is looked up again; `forget` drops the chat after an add or a leave). Real
database on both backends; the statements are counted with SQLAlchemy's engine events."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, event, insert

from chat.live import ChatLive
from chat.models import Chat, ChatMember
from hub.broker_memory import MemoryBroker
from hub.db import Database, utcnow
from hub.errors import NotFound
from hub.metrics import Metrics
from hub.presence import MemoryPresence, Presence
from hub.ratelimit import Limit, MemoryRateLimiter
from hub.settings import Settings
from hub.signals import Signals
from tests.wsutil import make_users


async def test_typing_reads_members_once_per_ttl_and_sees_changes_at_once(settings: Settings) -> None:
    (a, _), (b, _), (c, _) = await make_users(settings, 3)
    db = Database(settings.database_url)
    db.open()
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "chat_members" in statement:
            queries.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with db.sessions.begin() as session:
            now = utcnow()
            chat = (await session.execute(insert(Chat).values(
                title="t", created_by=a, created_at=now, last_activity_at=now, message_count=0,
            ).returning(Chat.id))).scalar_one()
            await session.execute(insert(ChatMember), [
                {"chat_id": chat, "user_id": user, "joined_at": now, "last_read_message_id": 0,
                 "last_read_seq": 0} for user in (a, b)])
        metrics = Metrics()
        live = ChatLive(db, Signals(MemoryBroker(), metrics, ""),
                        Presence(MemoryPresence(), metrics, 1.0), MemoryRateLimiter(metrics),
                        Limit("chat_typing", 1000.0, 1000), members_ttl=60.0)

        for _ in range(5):
            assert await live.typing(a, chat) is True
        assert await live.typing(b, chat) is True
        assert len(queries) == 1  # one read for six typing signals of two members

        with pytest.raises(NotFound):
            await live.typing(c, chat)  # a stranger: looked up, not taken from the cache
        assert len(queries) == 2
        async with db.sessions.begin() as session:  # c joins (through another process, say)
            await session.execute(insert(ChatMember).values(
                chat_id=chat, user_id=c, joined_at=utcnow(), last_read_message_id=0,
                last_read_seq=0))
        assert await live.typing(c, chat) is True
        assert len(queries) == 3

        async with db.sessions.begin() as session:  # b leaves through this process
            await session.execute(delete(ChatMember).where(ChatMember.chat_id == chat,
                                                           ChatMember.user_id == b))
        live.forget(chat)
        with pytest.raises(NotFound):
            await live.typing(b, chat)
        assert await live.typing(a, chat) is True
        assert len(queries) == 4
    finally:
        await db.close()
