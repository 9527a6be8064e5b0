"""Tables of the hub core: users (the identity every feature refers to), streams and events.

Features add their own tables on `hub.db.Base` and refer to `users.id`.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, UTCDateTime, utcnow


class User(Base):
    """An account. Credentials live with `auth`; the hub needs only id and name."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("uq_users_username_lower", func.lower(username), unique=True),)


class Stream(Base):
    """The head of one user's event stream.

    `last_id` is the newest event id (ids are gapless: the row lock taken by the increment
    orders writers); `published_id` is the newest id known to have reached the broker, which
    the relay uses to republish what a crash or a broker outage left behind; events up to
    `trimmed_id` were removed by retention.
    """

    __tablename__ = "streams"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[str] = mapped_column(String(32))
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)
    published_id: Mapped[int] = mapped_column(BigInteger, default=0)
    trimmed_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_streams_unpublished", "updated_at"),)


class Event(Base):
    """One event of one user's stream; `data` is the JSON text, serialized once when written.
    On PostgreSQL the foreign key is replaced by a trigger that deletes a deleted stream's
    events (migration 0005: its per-row check was half the cost of an append)."""

    __tablename__ = "events"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("streams.user_id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_events_created_at", "created_at"),)


class IdempotencyKey(Base):
    """A stored answer to a request retried with the same `Idempotency-Key` (kept 24 h)."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
