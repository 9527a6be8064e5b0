"""Tables of the chat feature: chats, their members (with each one's read marker), messages, and
the blocks between users.

Counters kept on the rows make the hot reads constant-time at any history size:
`chats.message_count` is the `seq` of the chat's newest message (messages are numbered 1, 2, ...
within their chat), and a member's unread count is `message_count - last_read_seq`. Posting
takes the chat row's lock, so ids and seqs of one chat increase together.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, UTCDateTime, utcnow

# SQLite autoincrements only an INTEGER PRIMARY KEY (its rowid); PostgreSQL gets a bigserial.
MessageId = BigInteger().with_variant(Integer(), "sqlite")


class Chat(Base):
    __tablename__ = "chats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    message_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_chats_last_activity", "last_activity_at", "id"),)


class ChatMember(Base):
    """A user's membership of a chat; `last_read_*` name the newest message they have read
    (0 for none) and only ever move forward."""

    __tablename__ = "chat_members"

    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    joined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_read_message_id: Mapped[int] = mapped_column(BigInteger, default=0)
    last_read_seq: Mapped[int] = mapped_column(BigInteger, default=0)

    # The primary key serves "members of a chat"; this one serves "chats of a user".
    __table_args__ = (Index("ix_chat_members_user_id_chat_id", "user_id", "chat_id"),)


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(MessageId, primary_key=True, autoincrement=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    sender_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # Keyset pages, newest first: `WHERE chat_id = ? AND id < ? ORDER BY id DESC LIMIT n`.
        Index("ix_messages_chat_id_id", "chat_id", "id", unique=True),
        # One message per position of a chat; unread arithmetic relies on it.
        Index("uq_messages_chat_id_seq", "chat_id", "seq", unique=True),
        Index("ix_messages_sender_id", "sender_id"),
    )


class Block(Base):
    """`blocker_id` blocks `blocked_id`: the blocked user cannot add the blocker to a chat."""

    __tablename__ = "user_blocks"

    blocker_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    blocked_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    # The primary key serves "whom do I block"; this one serves "who blocks me" and the
    # cascade when a user is deleted.
    __table_args__ = (Index("ix_user_blocks_blocked_id", "blocked_id"),)
