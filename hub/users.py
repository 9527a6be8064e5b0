"""Queries on the users table that the core and every feature share. They never commit."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import Database
from hub.models import User
from hub.streams import create_stream


async def create_user(session: AsyncSession, username: str) -> User:
    """Insert a user and its empty event stream; raises IntegrityError if the name is taken."""
    user = User(username=username)
    session.add(user)
    await session.flush()
    await create_stream(session, user.id)
    return user


async def get_user(session: AsyncSession, user_id: int) -> User | None:
    return await session.get(User, user_id)


async def user_exists(db: Database, user_id: int) -> bool:
    """One query on a bare connection of `Database.readers` (autocommit on PostgreSQL): what
    every authenticated call asks, without a session's BEGIN and ROLLBACK round trips."""
    async with db.readers.connect() as conn:
        return (await conn.execute(select(User.id).where(User.id == user_id))).first() is not None


async def existing_user_ids(session: AsyncSession, user_ids: Iterable[int]) -> set[int]:
    wanted = sorted(set(user_ids))
    found: set[int] = set()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start:start + 5000]
        rows = await session.scalars(select(User.id).where(User.id.in_(chunk)))
        found.update(rows)
    return found


async def usernames(session: AsyncSession, user_ids: Iterable[int]) -> dict[int, str]:
    rows = await session.execute(select(User.id, User.username).where(User.id.in_(set(user_ids))))
    return {row.id: row.username for row in rows}


async def search_users(session: AsyncSession, prefix: str, limit: int = 20) -> list[User]:
    """Users whose name starts with `prefix` (case-insensitive), shortest names first."""
    escaped = prefix.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = (
        select(User)
        .where(User.username.ilike(escaped + "%", escape="\\"))
        .order_by(func.length(User.username), User.username)
        .limit(limit)
    )
    return list(await session.scalars(query))
