"""Sessions: what logout and a password change revoke, and how every process learns of it.

A session is the family of refresh tokens rotated from one login; access tokens carry its id
in `sid`. REST calls check it in the same query that checks the token's user; open sockets are
closed by `RevocationWatch`, which each process runs every second: it reads the sessions
revoked since its last look and hands them to the core, which closes their connections with
4001. It also remembers the sessions revoked within one access-token lifetime, so that a
WebSocket `auth` frame (checked without a database read) is refused for them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import AuthSession, RefreshToken
from hub.db import Database, utcnow
from hub.models import User

CHECK_SECONDS = 1.0  # how often each process looks for revoked sessions
CLOCK_MARGIN = dt.timedelta(seconds=5)  # revocations stamped by a host whose clock is behind
OnRevoked = Callable[[Iterable[tuple[int, str]]], None]


def open_session(session: AsyncSession, user_id: int, session_id: str) -> None:
    session.add(AuthSession(id=session_id, user_id=user_id, created_at=utcnow()))


async def revoke_sessions(session: AsyncSession, user_id: int, session_id: str | None = None) -> None:
    """Revoke one session of `user_id`, or all of them; their refresh tokens stop working too."""
    now = utcnow()
    sessions = update(AuthSession).where(AuthSession.user_id == user_id,
                                         AuthSession.revoked_at.is_(None))
    tokens = update(RefreshToken).where(RefreshToken.user_id == user_id)
    if session_id is not None:
        sessions = sessions.where(AuthSession.id == session_id)
        tokens = tokens.where(RefreshToken.family == session_id)
    await session.execute(sessions.values(revoked_at=now).execution_options(synchronize_session=False))
    await session.execute(tokens.values(revoked=True).execution_options(synchronize_session=False))


async def session_is_live(db: Database, user_id: int, session_id: str) -> bool:
    """Whether the user exists and the session is theirs and not revoked: one query on a bare
    autocommit connection, like the user check it replaces."""
    query = (select(AuthSession.id).join(User, User.id == AuthSession.user_id)
             .where(AuthSession.id == session_id, AuthSession.user_id == user_id,
                    AuthSession.revoked_at.is_(None)))
    async with db.readers.connect() as conn:
        return (await conn.execute(query)).first() is not None


class RevocationWatch:
    """Finds sessions revoked by any process and hands (user id, session id) pairs to
    `on_revoked` once each; `step` is a supervised loop's body."""

    def __init__(self, db: Database, access_ttl: int, on_revoked: OnRevoked) -> None:
        self._db = db
        self._remember = dt.timedelta(seconds=access_ttl) + CLOCK_MARGIN
        self._on_revoked = on_revoked
        self._revoked: dict[str, dt.datetime] = {}
        self._checked_at: dt.datetime | None = None

    def is_revoked(self, session_id: str) -> bool:
        """Revoked as of this process's last look (at most `CHECK_SECONDS` old)."""
        return session_id in self._revoked

    async def step(self) -> None:
        started = utcnow()
        since = (started - self._remember if self._checked_at is None
                 else self._checked_at - CLOCK_MARGIN)
        query = (select(AuthSession.id, AuthSession.user_id, AuthSession.revoked_at)
                 .where(AuthSession.revoked_at > since))
        async with self._db.readers.connect() as conn:
            rows = (await conn.execute(query)).all()
        fresh = [(row.user_id, row.id) for row in rows if row.id not in self._revoked]
        for row in rows:
            self._revoked[row.id] = row.revoked_at
        forget = started - self._remember
        self._revoked = {sid: at for sid, at in self._revoked.items() if at > forget}
        self._checked_at = started
        if fresh:
            self._on_revoked(fresh)
