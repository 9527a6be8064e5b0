"""Queries on the chat tables. They take a session and never commit; every membership check
is part of the query that needs it (an EXISTS on `chat_members`), never a load of the chat."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, bindparam, delete, exists, func, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from chat.models import Block, Chat, ChatMember, Message
from hub.db import UTCDateTime, rfc3339
from hub.models import User


@dataclass(frozen=True, slots=True)
class ChatRow:
    """A chat as one member sees it."""

    id: int
    title: str
    created_at: dt.datetime
    unread_count: int


@dataclass(frozen=True, slots=True)
class ChatHead:
    """The position of a chat's newest message, read under the chat row's lock, and the name
    of the member who took it."""

    message_count: int
    last_message_id: int | None
    member_name: str


def _is_member(chat_id: Any, user_id: int) -> Any:
    return exists().where(ChatMember.chat_id == chat_id, ChatMember.user_id == user_id)


async def lock_chat(session: AsyncSession, chat_id: int, member_id: int) -> ChatHead | None:
    """Lock the chat row if `member_id` belongs to it (None otherwise, for members and
    strangers alike). Writers that change a chat's messages or members take this lock first."""
    row = (await session.execute(
        select(Chat.message_count, Chat.last_message_id, User.username)
        .join(User, User.id == member_id)
        .where(Chat.id == chat_id, _is_member(Chat.id, member_id))
        # FOR NO KEY UPDATE: writers of this chat queue here, foreign-key checks do not.
        .with_for_update(of=Chat, key_share=True)
    )).first()
    return ChatHead(row[0], row[1], row[2]) if row else None


async def is_member(session: AsyncSession, chat_id: int, user_id: int) -> bool:
    return bool(await session.scalar(select(_is_member(chat_id, user_id))))


async def member_ids(session: AsyncSession, chat_id: int) -> list[int]:
    rows = await session.scalars(
        select(ChatMember.user_id).where(ChatMember.chat_id == chat_id).order_by(ChatMember.user_id))
    return list(rows)


async def member_count(session: AsyncSession, chat_id: int) -> int:
    return int(await session.scalar(
        select(func.count()).select_from(ChatMember).where(ChatMember.chat_id == chat_id)) or 0)


async def members_of(session: AsyncSession, chat_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """`{chat_id: [{"user_id", "username"}, ...]}`, members in user-id order."""
    found: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for start in range(0, len(chat_ids), 1000):
        rows = await session.execute(
            select(ChatMember.chat_id, User.id, User.username)
            .join(User, User.id == ChatMember.user_id)
            .where(ChatMember.chat_id.in_(chat_ids[start:start + 1000]))
            .order_by(ChatMember.chat_id, User.id)
        )
        for chat_id, user_id, username in rows:
            found[chat_id].append({"user_id": user_id, "username": username})
    return found


def _chat_rows(user_id: int) -> Any:
    return (
        select(Chat.id, Chat.title, Chat.created_at,
               Chat.message_count - ChatMember.last_read_seq)
        .join(ChatMember, ChatMember.chat_id == Chat.id)
        .where(ChatMember.user_id == user_id)
    )


async def chat_of_member(session: AsyncSession, chat_id: int, user_id: int) -> ChatRow | None:
    row = (await session.execute(_chat_rows(user_id).where(Chat.id == chat_id))).first()
    return ChatRow(*row) if row else None


async def chats_of_member(session: AsyncSession, user_id: int) -> list[ChatRow]:
    """The user's chats, latest activity first."""
    rows = await session.execute(
        _chat_rows(user_id).order_by(Chat.last_activity_at.desc(), Chat.id.desc()))
    return [ChatRow(*row) for row in rows]


async def insert_chat(session: AsyncSession, title: str, creator_id: int,
                      member_ids: Iterable[int], now: dt.datetime) -> int:
    chat_id = (await session.execute(
        insert(Chat).values(title=title, created_by=creator_id, created_at=now,
                            last_activity_at=now, message_count=0, last_message_id=None)
        .returning(Chat.id)
    )).scalar_one()
    await session.execute(insert(ChatMember), [
        {"chat_id": chat_id, "user_id": user_id, "joined_at": now,
         "last_read_message_id": 0, "last_read_seq": 0}
        for user_id in sorted(set(member_ids))
    ])
    return chat_id


async def insert_member(session: AsyncSession, chat_id: int, user_id: int, head: ChatHead,
                        now: dt.datetime) -> None:
    """Add a member who has read what the chat held when they joined."""
    await session.execute(insert(ChatMember).values(
        chat_id=chat_id, user_id=user_id, joined_at=now,
        last_read_message_id=head.last_message_id or 0, last_read_seq=head.message_count))


async def delete_member(session: AsyncSession, chat_id: int, user_id: int) -> None:
    """Remove the membership, and with it the member's read marker."""
    await session.execute(
        delete(ChatMember).where(ChatMember.chat_id == chat_id, ChatMember.user_id == user_id)
        .execution_options(synchronize_session=False))


async def delete_chat(session: AsyncSession, chat_id: int) -> None:
    """Delete the chat; its members and messages go with it (ON DELETE CASCADE)."""
    await session.execute(
        delete(Chat).where(Chat.id == chat_id).execution_options(synchronize_session=False))


# A post's writes and the recipients' read in one round trip: the message, the chat's counters,
# the sender's read marker, and the member ids. The chat row is already locked (`lock_chat`, an
# earlier statement), so this statement's snapshot, taken after that lock was granted, holds
# every membership change committed before: each one takes the same lock.
_POST = sql_text("""
WITH message AS (
    INSERT INTO messages (chat_id, seq, sender_id, text, created_at)
    VALUES (:chat_id, :seq, :sender_id, :text, :now)
    RETURNING id
), counters AS (
    UPDATE chats SET message_count = :seq, last_message_id = (SELECT id FROM message),
                     last_activity_at = :now
    WHERE id = :chat_id
), read_mark AS (
    UPDATE chat_members SET last_read_message_id = (SELECT id FROM message), last_read_seq = :seq
    WHERE chat_id = :chat_id AND user_id = :sender_id AND last_read_seq < :seq
)
SELECT (SELECT id FROM message),
       ARRAY(SELECT user_id FROM chat_members WHERE chat_id = :chat_id ORDER BY user_id)
""").bindparams(bindparam("now", type_=UTCDateTime()), bindparam("seq", type_=BigInteger()))


async def insert_message(session: AsyncSession, chat_id: int, head: ChatHead, sender_id: int,
                         text: str, now: dt.datetime) -> tuple[int, list[int]]:
    """Append a message after `head` (read under the chat's lock), move the chat's counters and
    the sender's read marker to it; returns its id and the chat's member ids, ascending (one
    statement on PostgreSQL, four on SQLite)."""
    seq = head.message_count + 1
    if session.get_bind().dialect.name == "postgresql":
        message_id, members = (await session.execute(_POST, {
            "chat_id": chat_id, "seq": seq, "sender_id": sender_id, "text": text, "now": now,
        })).one()
        return int(message_id), list(members)
    message_id = (await session.execute(
        insert(Message).values(chat_id=chat_id, seq=seq, sender_id=sender_id, text=text,
                               created_at=now).returning(Message.id)
    )).scalar_one()
    await session.execute(
        update(Chat).where(Chat.id == chat_id)
        .values(message_count=seq, last_message_id=message_id, last_activity_at=now)
        .execution_options(synchronize_session=False)
    )
    await advance_read(session, chat_id, sender_id, message_id, seq)
    return int(message_id), await member_ids(session, chat_id)


async def message_seq(session: AsyncSession, chat_id: int, message_id: int) -> int | None:
    return await session.scalar(
        select(Message.seq).where(Message.id == message_id, Message.chat_id == chat_id))


async def advance_read(session: AsyncSession, chat_id: int, user_id: int, message_id: int,
                       seq: int) -> bool:
    """Move the member's read marker forward to the message; False when it was already there
    or past it."""
    result = await session.execute(
        update(ChatMember)
        .where(ChatMember.chat_id == chat_id, ChatMember.user_id == user_id,
               ChatMember.last_read_seq < seq)
        .values(last_read_message_id=message_id, last_read_seq=seq)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def message_page(session: AsyncSession, chat_id: int, before_id: int | None,
                       limit: int) -> list[dict[str, Any]]:
    """Up to `limit` messages of the chat older than `before_id`, newest first, as JSON objects.

    Pages walk the chat's `seq` (the same order as ids within a chat): the (chat_id, seq) index
    is the only one that yields that order, so the planner cannot trade it for a backward scan
    of the whole table's primary key that filters out other chats' messages."""
    query = (
        select(Message.id, Message.sender_id, User.username, Message.text, Message.created_at)
        .join(User, User.id == Message.sender_id)
        .where(Message.chat_id == chat_id)
        .limit(limit)
    )
    if before_id is None:
        query = query.order_by(Message.seq.desc())
    elif (before_seq := await message_seq(session, chat_id, before_id)) is not None:
        query = query.where(Message.seq < before_seq).order_by(Message.seq.desc())
    else:  # not a cursor this chat handed out; still answer correctly, by id
        query = query.where(Message.id < before_id).order_by(Message.id.desc())
    rows = await session.execute(query)
    return [message_json(message_id, chat_id, sender_id, username, text, created_at)
            for message_id, sender_id, username, text, created_at in rows]


async def blockers_among(session: AsyncSession, user_ids: Iterable[int], blocked_id: int) -> list[int]:
    """Which of `user_ids` block `blocked_id`, ascending."""
    wanted = sorted(set(user_ids))
    found: list[int] = []
    for start in range(0, len(wanted), 1000):
        found.extend(await session.scalars(
            select(Block.blocker_id)
            .where(Block.blocked_id == blocked_id, Block.blocker_id.in_(wanted[start:start + 1000]))
            .order_by(Block.blocker_id)))
    return found


async def insert_block(session: AsyncSession, blocker_id: int, blocked_id: int,
                       now: dt.datetime) -> None:
    """Record the block; nothing happens if it is already there (also under a concurrent twin)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    await session.execute(
        dialect.insert(Block).values(blocker_id=blocker_id, blocked_id=blocked_id, created_at=now)
        .on_conflict_do_nothing())


async def delete_block(session: AsyncSession, blocker_id: int, blocked_id: int) -> None:
    await session.execute(
        delete(Block).where(Block.blocker_id == blocker_id, Block.blocked_id == blocked_id)
        .execution_options(synchronize_session=False))


async def blocks_of(session: AsyncSession, blocker_id: int) -> list[dict[str, Any]]:
    """`[{"user_id", "username"}, ...]` of the users `blocker_id` blocks, in user-id order."""
    rows = await session.execute(
        select(User.id, User.username).join(Block, Block.blocked_id == User.id)
        .where(Block.blocker_id == blocker_id).order_by(User.id))
    return [{"user_id": user_id, "username": username} for user_id, username in rows]


def message_json(message_id: int, chat_id: int, sender_id: int, sender_username: str, text: str,
                 created_at: dt.datetime) -> dict[str, Any]:
    return {"id": message_id, "chat_id": chat_id, "sender_id": sender_id,
            "sender_username": sender_username, "text": text, "created_at": rfc3339(created_at)}


def chat_json(row: ChatRow, members: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": row.id, "title": row.title, "created_at": rfc3339(row.created_at),
            "members": members, "unread_count": row.unread_count}


_CHATS_OF_USERS = sql_text("""
SELECT chat_id, array_agg(user_id ORDER BY user_id) FROM chat_members
WHERE chat_id IN (SELECT chat_id FROM chat_members WHERE user_id = ANY(:user_ids))
GROUP BY chat_id ORDER BY chat_id
""").bindparams(bindparam("user_ids", type_=postgresql.ARRAY(Integer)))


async def chats_of_users(session: AsyncSession, user_ids: Collection[int]) -> dict[int, list[int]]:
    """`{chat_id: [member ids, ascending]}` over every chat any of `user_ids` is a member of
    (one query).

    PostgreSQL takes the ids as one array parameter and answers a row per chat, its members
    aggregated: presence asks this for hundreds of users at once, and neither an IN list to
    render nor a row per member to load is then paid for. SQLite pads the id list (with its
    last id) to a power of two, so the statement has at most a dozen distinct texts."""
    if session.get_bind().dialect.name == "postgresql":
        rows = await session.execute(_CHATS_OF_USERS, {"user_ids": list(user_ids)})
        return {chat_id: list(members) for chat_id, members in rows}
    ids = sorted(user_ids)
    if ids:
        ids += [ids[-1]] * ((1 << (len(ids) - 1).bit_length()) - len(ids))
    theirs = select(ChatMember.chat_id).where(ChatMember.user_id.in_(ids))
    rows = await session.execute(
        select(ChatMember.chat_id, ChatMember.user_id)
        .where(ChatMember.chat_id.in_(theirs))
        .order_by(ChatMember.chat_id, ChatMember.user_id))
    found: dict[int, list[int]] = defaultdict(list)
    for chat_id, member_id in rows:
        found[chat_id].append(member_id)
    return found
