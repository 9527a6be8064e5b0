"""Tables and queries of Web Push (protocol §13). Queries take a session and never commit.

- `push_subscriptions`: the browsers' PushSubscriptions, at most `PUSH_MAX_SUBSCRIPTIONS` a user.
- `push_users`: per user with subscriptions, how far the decision has read their stream
  (`scanned_id`) and the newest event any connection of theirs delivered (`delivered_id`).
- `push_outbox`: the pushes decided and not yet sent, one per (subscription, event): the unique
  key makes a push decided twice exist once; a claim (`claimed_until`) written in its own commit
  makes one process send it, and a claim that outlived its process is dropped, never re-sent.
  A close push (`Urgency: low`, payload `{"close": topic}`) has minus the event id of the
  notification it closes as its `event_id`.
- `push_notices`: per subscription and topic, the newest push decided with that topic and its
  position (a chat message's id): the notification the device may be showing, until a read
  reaches that position and a close push is decided in its place.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, UTCDateTime, utcnow
from hub.models import Event, Stream

OutboxId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


class PushSubscription(Base):
    __tablename__ = "push_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    endpoint: Mapped[str] = mapped_column(String(2048), unique=True)
    p256dh: Mapped[str] = mapped_column(String(128))
    auth: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PushUser(Base):
    __tablename__ = "push_users"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    scanned_id: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_id: Mapped[int] = mapped_column(BigInteger, default=0)


class PushOutbox(Base):
    __tablename__ = "push_outbox"

    id: Mapped[int] = mapped_column(OutboxId, primary_key=True, autoincrement=True)
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("push_subscriptions.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    topic: Mapped[str | None] = mapped_column(String(32), nullable=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    next_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    urgency: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")

    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_push_outbox_subscription_event"),
        Index("ix_push_outbox_next_at", "next_at"),
    )


class PushNotice(Base):
    __tablename__ = "push_notices"

    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("push_subscriptions.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger)
    position: Mapped[int] = mapped_column(BigInteger)


CLOSE_TTL = dt.timedelta(days=1)  # a notification may show that long and more; PUSH_TTL's default


# --- subscriptions -----------------------------------------------------------------------------

async def find_subscription(session: AsyncSession, endpoint: str) -> PushSubscription | None:
    return (await session.execute(
        select(PushSubscription).where(PushSubscription.endpoint == endpoint))).scalar_one_or_none()


async def count_subscriptions(session: AsyncSession, user_id: int) -> int:
    return int((await session.execute(
        select(func.count()).select_from(PushSubscription)
        .where(PushSubscription.user_id == user_id))).scalar_one())


async def add_subscription(session: AsyncSession, user_id: int, endpoint: str, p256dh: str,
                           auth: str) -> int:
    """Insert the subscription; the user's stream is scanned from its current head on, so
    nothing written before the subscription is pushed."""
    row = PushSubscription(user_id=user_id, endpoint=endpoint, p256dh=p256dh, auth=auth)
    session.add(row)
    if await session.get(PushUser, user_id) is None:
        head = (await session.execute(
            select(Stream.last_id).where(Stream.user_id == user_id))).scalar_one_or_none()
        session.add(PushUser(user_id=user_id, scanned_id=head or 0, delivered_id=0))
    await session.flush()
    return row.id


async def remove_subscription(session: AsyncSession, subscription_id: int,
                              user_id: int | None = None) -> bool:
    """Delete the subscription (its pending pushes with it); False when there is none (of that
    user). The user's scan row goes with their last subscription."""
    condition = PushSubscription.id == subscription_id
    if user_id is not None:
        condition = condition & (PushSubscription.user_id == user_id)
    owner = (await session.execute(
        delete(PushSubscription).where(condition).returning(PushSubscription.user_id))
    ).scalar_one_or_none()
    if owner is None:
        return False
    await session.execute(delete(PushOutbox).where(PushOutbox.subscription_id == subscription_id))
    if not await count_subscriptions(session, owner):
        await session.execute(delete(PushUser).where(PushUser.user_id == owner))
    return True


# --- what users have seen ----------------------------------------------------------------------

async def record_delivered(session: AsyncSession, delivered: Mapping[int, int]) -> None:
    """Raise `delivered_id` of the users who have push rows (never lowers it): one statement
    run for many rows (asyncpg sends them in one batch), in user-id order, the one lock order of
    every process."""
    table = cast(Table, PushUser.__table__)
    statement = (update(table)
                 .where(table.c.user_id == bindparam("uid"), table.c.delivered_id < bindparam("mark"))
                 .values(delivered_id=bindparam("mark")))
    connection = await session.connection()
    await connection.execute(statement, [{"uid": user_id, "mark": event_id}
                                         for user_id, event_id in sorted(delivered.items())])


# --- the decision ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DueEvent:
    id: int
    name: str
    data: str
    created_at: dt.datetime


@dataclass(slots=True)
class UserScan:
    user_id: int
    scanned_id: int
    delivered_id: int
    subscription_ids: list[int]
    events: list[DueEvent]


async def claim_scans(session: AsyncSession, due: dt.datetime, users: int,
                      events_per_user: int, after: int = 0) -> list[UserScan]:
    """Users of id above `after` with events past `scanned_id` created at or before `due`,
    their rows locked (rows another process holds are skipped), with those events in id order
    (stopping at the first not yet due, so the scan never passes an event it has not decided).
    A caller going through all users passes the last id it got as `after`, so it does not
    test the users it has just decided again."""
    pending = select(Event.id).where(Event.user_id == PushUser.user_id,
                                     Event.id > PushUser.scanned_id,
                                     Event.created_at <= due).exists()
    rows = (await session.execute(
        select(PushUser.user_id, PushUser.scanned_id, PushUser.delivered_id)
        .where(PushUser.user_id > after, pending).order_by(PushUser.user_id).limit(users)
        .with_for_update(skip_locked=True))).all()
    if not rows:
        return []
    scans = {user_id: UserScan(user_id, scanned_id, delivered_id, [], [])
             for user_id, scanned_id, delivered_id in rows}
    # One query for everyone's events: each user's next ones past their scan, numbered per user.
    numbered = (select(Event.user_id, Event.id, Event.name, Event.data, Event.created_at,
                       func.row_number().over(partition_by=Event.user_id, order_by=Event.id)
                       .label("n"))
                .join(PushUser, PushUser.user_id == Event.user_id)
                .where(PushUser.user_id.in_(scans), Event.id > PushUser.scanned_id).subquery())
    blocked: set[int] = set()
    for user_id, event_id, name, data, created_at, _n in await session.execute(
            select(numbered).where(numbered.c.n <= events_per_user)
            .order_by(numbered.c.user_id, numbered.c.id)):
        if user_id in blocked or created_at > due:  # never pass an event not yet due
            blocked.add(user_id)
            continue
        scans[user_id].events.append(DueEvent(event_id, name, data, created_at))
    for subscription_id, user_id in await session.execute(
            select(PushSubscription.id, PushSubscription.user_id)
            .where(PushSubscription.user_id.in_(scans)).order_by(PushSubscription.id)):
        scans[user_id].subscription_ids.append(subscription_id)
    return list(scans.values())


@dataclass(frozen=True, slots=True)
class NewPush:
    subscription_id: int
    event_id: int
    payload: bytes
    topic: str | None
    expires_at: dt.datetime
    position: int | None = None  # with a topic: what a read must reach to close it
    urgency: str = "normal"


async def enqueue(session: AsyncSession, dialect: str, pushes: Sequence[NewPush]) -> None:
    """Add pushes to the outbox; one already there (same subscription and event) stays as is.
    A push with a topic and a position becomes its subscription's notice of that topic. One
    statement run for all rows of each table (compiled once, not per number of rows)."""
    if not pushes:
        return
    now = utcnow()
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    connection = await session.connection()
    outbox = cast(Table, PushOutbox.__table__)
    await connection.execute(
        insert(outbox).on_conflict_do_nothing(index_elements=["subscription_id", "event_id"]),
        [{"subscription_id": p.subscription_id, "event_id": p.event_id, "payload": p.payload,
          "topic": p.topic, "expires_at": p.expires_at, "next_at": now, "attempts": 0,
          "urgency": p.urgency} for p in pushes])
    notices = {(p.subscription_id, p.topic): p for p in pushes
               if p.topic is not None and p.position is not None}
    if notices:
        table = cast(Table, PushNotice.__table__)
        statement = insert(table)
        await connection.execute(
            statement.on_conflict_do_update(
                index_elements=["subscription_id", "topic"],
                set_={"event_id": statement.excluded.event_id,
                      "position": statement.excluded.position}),
            [{"subscription_id": p.subscription_id, "topic": p.topic, "event_id": p.event_id,
              "position": p.position} for p in notices.values()])


async def close_notices(session: AsyncSession, user_id: int, topic: str, position: int,
                        payload: bytes) -> int:
    """The user has seen `topic` up to `position` elsewhere: each of their subscriptions with
    a notice of that topic at or below it gets a close push (`payload`, `Urgency: low`, the
    same topic so it replaces a push still waiting at the push service) and loses the
    notice. The notice's own push, when no process has claimed it yet, is dropped: it would
    only show what was read. Returns how many close pushes were decided."""
    notice = PushNotice
    rows = [(subscription_id, event_id) for subscription_id, event_id in (await session.execute(
        delete(notice)
        .where(notice.topic == topic, notice.position <= position,
               notice.subscription_id.in_(select(PushSubscription.id)
                                          .where(PushSubscription.user_id == user_id)))
        .returning(notice.subscription_id, notice.event_id))).all()]
    if rows:
        await session.execute(delete(PushOutbox).where(
            tuple_(PushOutbox.subscription_id, PushOutbox.event_id).in_(rows),
            PushOutbox.claimed_until.is_(None)))
    expires_at = utcnow() + CLOSE_TTL
    dialect = (await session.connection()).dialect.name
    await enqueue(session, dialect, [
        NewPush(subscription_id, -event_id, payload, topic, expires_at, urgency="low")
        for subscription_id, event_id in rows])
    return len(rows)


async def advance_scans(session: AsyncSession, scanned: Mapping[int, int]) -> None:
    """Move each user's scan (user id -> last event id decided) in one executemany."""
    if scanned:
        table = cast(Table, PushUser.__table__)
        connection = await session.connection()
        await connection.execute(
            update(table).where(table.c.user_id == bindparam("uid"))
            .values(scanned_id=bindparam("scanned")),
            [{"uid": user_id, "scanned": scanned_id} for user_id, scanned_id in scanned.items()])


# --- sending -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClaimedPush:
    id: int
    subscription_id: int
    endpoint: str
    p256dh: str
    auth: str
    payload: bytes
    topic: str | None
    expires_at: dt.datetime
    attempts: int
    urgency: str


async def drop_abandoned(session: AsyncSession, now: dt.datetime) -> int:
    """Delete pushes whose claim expired: their process died mid-send, and the push service
    may have them already (never twice beats maybe once)."""
    result = await session.execute(
        delete(PushOutbox).where(PushOutbox.claimed_until < now).returning(PushOutbox.id))
    return len(result.all())


async def claim_due(session: AsyncSession, now: dt.datetime, lease: dt.timedelta,
                    limit: int) -> list[ClaimedPush]:
    """Claim up to `limit` unclaimed pushes due by `now` until `now + lease`; rows another
    process is claiming are skipped. Commit before sending."""
    rows = (await session.execute(
        select(PushOutbox.id, PushOutbox.subscription_id, PushSubscription.endpoint,
               PushSubscription.p256dh, PushSubscription.auth, PushOutbox.payload,
               PushOutbox.topic, PushOutbox.expires_at, PushOutbox.attempts, PushOutbox.urgency)
        .join(PushSubscription, PushSubscription.id == PushOutbox.subscription_id)
        .where(PushOutbox.claimed_until.is_(None), PushOutbox.next_at <= now)
        .order_by(PushOutbox.next_at).limit(limit)
        .with_for_update(of=PushOutbox, skip_locked=True))).all()
    if rows:
        await session.execute(update(PushOutbox).where(PushOutbox.id.in_([r[0] for r in rows]))
                              .values(claimed_until=now + lease))
    return [ClaimedPush(*cast(tuple[Any, ...], row)) for row in rows]


_FINISH_AND_CLAIM = """
WITH finished AS (
    DELETE FROM push_outbox WHERE id = ANY(CAST($1 AS BIGINT[]))
), due AS (
    SELECT id FROM push_outbox
    WHERE claimed_until IS NULL AND next_at <= CAST($2 AS TIMESTAMPTZ)
    ORDER BY next_at LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE push_outbox o SET claimed_until = CAST($3 AS TIMESTAMPTZ)
FROM due, push_subscriptions s
WHERE o.id = due.id AND s.id = o.subscription_id
RETURNING o.id, o.subscription_id, s.endpoint, s.p256dh, s.auth, o.payload, o.topic,
          o.expires_at, o.attempts, o.urgency
"""


async def finish_and_claim(autocommit: AsyncConnection, push_ids: Sequence[int],
                           now: dt.datetime, lease: dt.timedelta, limit: int) -> list[ClaimedPush]:
    """PostgreSQL, on a connection in autocommit mode: `finish` and `claim_due` in one
    self-committing statement, one round trip instead of five (BEGIN, DELETE, SELECT, UPDATE,
    COMMIT). The statement goes to asyncpg directly, which keeps it prepared."""
    driver = (await autocommit.get_raw_connection()).driver_connection
    assert driver is not None
    rows = await driver.fetch(_FINISH_AND_CLAIM, list(push_ids), now, now + lease, limit)
    return [ClaimedPush(*row) for row in rows]


async def finish(session: AsyncSession, push_ids: Sequence[int]) -> None:
    """Remove pushes that are done with (sent, refused or expired) in one statement."""
    if push_ids:
        await session.execute(delete(PushOutbox).where(PushOutbox.id.in_(push_ids)))


async def retry_at(session: AsyncSession, push_id: int, when: dt.datetime, attempts: int) -> None:
    await session.execute(update(PushOutbox).where(PushOutbox.id == push_id)
                          .values(next_at=when, attempts=attempts, claimed_until=None))
