"""Accounts: register, log in, rotate refresh tokens with reuse detection, authenticate."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from auth.models import Credential, RefreshToken
from auth.passwords import Passwords
from auth.tokens import ACCESS, REFRESH, TokenCodec
from hub.db import Database, utcnow
from hub.identity import AuthError, Identity
from hub.models import User
from hub.users import create_user, user_exists

log = logging.getLogger("auth")


class UsernameTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class Accounts:
    """The account service; also the core's `Authenticator` for access tokens."""

    def __init__(self, db: Database, codec: TokenCodec, passwords: Passwords) -> None:
        self._db = db
        self._codec = codec
        self._passwords = passwords

    async def register(self, username: str, password: str) -> User:
        password_hash = await self._passwords.hash(password)
        try:
            async with self._db.sessions.begin() as session:
                user = await create_user(session, username)
                session.add(Credential(user_id=user.id, password_hash=password_hash))
        except IntegrityError:
            raise UsernameTaken(username) from None
        return user

    async def login(self, username: str, password: str) -> TokenPair:
        """A fresh token pair; raises AuthError alike for an unknown user and a wrong password."""
        async with self._db.sessions() as session:
            row = (await session.execute(
                select(User.id, Credential.password_hash)
                .join(Credential, Credential.user_id == User.id)
                .where(func.lower(User.username) == username.lower())
            )).first()
        user_id, stored = (row[0], row[1]) if row else (None, None)
        if not await self._passwords.verify(stored, password) or user_id is None:
            raise AuthError("wrong username or password")
        assert stored is not None
        async with self._db.sessions.begin() as session:
            if self._passwords.needs_rehash(stored):
                await session.merge(
                    Credential(user_id=user_id, password_hash=await self._passwords.hash(password))
                )
            return await self._issue_pair(session, user_id, secrets.token_hex(16))

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the given token is spent and a new pair of the same family returned. A token
        that was already spent revokes its whole family and is refused."""
        claims = self._codec.verify(refresh_token, REFRESH)
        now = utcnow()
        async with self._db.sessions.begin() as session:
            spent = (await session.execute(
                update(RefreshToken)
                .where(RefreshToken.jti == claims.jti, RefreshToken.used_at.is_(None),
                       RefreshToken.revoked.is_(False), RefreshToken.expires_at > now)
                .values(used_at=now)
                .returning(RefreshToken.family, RefreshToken.user_id)
                .execution_options(synchronize_session=False)
            )).first()
            if spent is not None:
                return await self._issue_pair(session, spent.user_id, spent.family)
        async with self._db.sessions.begin() as session:
            family = await session.scalar(select(RefreshToken.family).where(RefreshToken.jti == claims.jti))
            if family is not None:
                await session.execute(
                    update(RefreshToken).where(RefreshToken.family == family).values(revoked=True)
                    .execution_options(synchronize_session=False)
                )
                log.warning("refresh token reused or revoked: family %s of user %s revoked",
                            family, claims.user_id)
        raise AuthError("refresh token already used, revoked or unknown")

    async def authenticate(self, token: str) -> Identity:
        identity = self.verify(token)
        if not await user_exists(self._db, identity.user_id):
            raise AuthError("the token's user no longer exists")
        return identity

    def verify(self, token: str) -> Identity:
        claims = self._codec.verify(token, ACCESS)
        return Identity(claims.user_id, float(claims.expires_at))

    async def _issue_pair(self, session: AsyncSession, user_id: int, family: str) -> TokenPair:
        access, _ = self._codec.issue(user_id, ACCESS)
        refresh, claims = self._codec.issue(user_id, REFRESH, family=family)
        session.add(RefreshToken(
            jti=claims.jti, family=family, user_id=user_id,
            expires_at=dt.datetime.fromtimestamp(claims.expires_at, dt.UTC),
        ))
        return TokenPair(access, refresh, self._codec.access_ttl)
