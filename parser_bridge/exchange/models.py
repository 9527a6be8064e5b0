"""The table of the exchange feature: exchange requests, each owned by one user.

Money and rates are stored as decimal text (never floats), so SQLite and PostgreSQL give back
exactly what was written.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, UTCDateTime, utcnow

PENDING = "pending"
# an exchange request ends in one of these
EXCHANGE_COMPLETED, EXCHANGE_FAILED = "completed", "failed"


class ExchangeRequest(Base):
    """Bills to convert for `owner_id`. `next_attempt_at` is when the hub next tries to hand the
    request to the exchange service (NULL once handed over or final); `bills` is JSON whose
    numbers are decimal strings; `breakdown` likewise once completed."""

    __tablename__ = "exchange_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    exchange_rate: Mapped[str] = mapped_column(String(64))
    bills: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    breakdown: Mapped[str | None] = mapped_column(Text, nullable=True)
    total_rub: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    forwarded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_exchange_requests_next_attempt_at", "next_attempt_at"),)
