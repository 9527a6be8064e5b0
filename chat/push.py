"""How a chat message is pushed (protocol §13): sender and text, one topic per chat, and not
at all once the member's read marker reached it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from chat.models import ChatMember
from hub.push_rules import Notice, PushRule


def describe_message(data: dict[str, Any]) -> Notice:
    return Notice(title=str(data["sender_username"]), body=str(data["text"]),
                  topic=chat_topic(int(data["chat_id"])), position=int(data["id"]))


def chat_topic(chat_id: int) -> str:
    """The push `Topic` of a chat's messages, and the tag of their notifications (/sw.js)."""
    return f"chat-{chat_id}"


async def message_read(session: AsyncSession, user_id: int, data: dict[str, Any]) -> bool:
    """The member's read marker is at or past the message (one's own messages included)."""
    marker = (await session.execute(
        select(ChatMember.last_read_message_id)
        .where(ChatMember.chat_id == int(data["chat_id"]), ChatMember.user_id == user_id)
    )).scalar_one_or_none()
    return marker is not None and marker >= int(data["id"])


def chat_message_rule() -> PushRule:
    return PushRule(describe=describe_message, seen=message_read)
