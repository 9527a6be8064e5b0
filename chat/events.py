"""The events of the chat (protocol §5) and the objects they carry, declared once: the service
emits them, the REST answers reuse the chat and message objects, the AsyncAPI document
describes them, and the browser client's names are compared with them by a test."""

from __future__ import annotations

from pydantic import BaseModel

from hub.events import EventType


class MemberOut(BaseModel):
    user_id: int
    username: str


class ChatOut(BaseModel):
    """The chat object, as the caller sees it (`unread_count` is theirs)."""

    id: int
    title: str
    created_at: str
    members: list[MemberOut]
    unread_count: int


class MessageOut(BaseModel):
    """The message object."""

    id: int
    chat_id: int
    sender_id: int
    sender_username: str
    text: str
    created_at: str


class Membership(BaseModel):
    """Who joined or left which chat."""

    chat_id: int
    user_id: int


class ReadUpTo(BaseModel):
    """A member's read marker moved forward to `message_id`."""

    chat_id: int
    user_id: int
    message_id: int


CHAT_CREATED = EventType("chat.created", ChatOut, "every member of the new chat")
CHAT_MEMBER_ADDED = EventType("chat.member_added", Membership,
                              "every member of the chat, the new one too")
CHAT_MESSAGE = EventType("chat.message", MessageOut,
                         "every member of the chat, the sender's own connections too")
CHAT_READ = EventType("chat.read", ReadUpTo, "the other members")
CHAT_MEMBER_LEFT = EventType("chat.member_left", Membership, "the remaining members")
CHAT_EVENTS = (CHAT_CREATED, CHAT_MEMBER_ADDED, CHAT_MESSAGE, CHAT_READ, CHAT_MEMBER_LEFT)
