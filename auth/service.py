"""Accounts: register, log in, rotate refresh tokens with reuse detection, log out, change the
password, authenticate."""

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
from auth.sessions import RevocationWatch, open_session, revoke_sessions, session_is_live
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

    def __init__(self, db: Database, codec: TokenCodec, passwords: Passwords,
                 revocations: RevocationWatch) -> None:
        self._db = db
        self._codec = codec
        self._passwords = passwords
        self._revocations = revocations

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
            return await self._new_session(session, user_id)

    async def username(self, user_id: int) -> str | None:
        async with self._db.sessions() as session:
            user = await session.get(User, user_id)
        return None if user is None else user.username

    async def change_password(self, user_id: int, current: str, new: str) -> TokenPair:
        """Replace the password when `current` is right (AuthError otherwise): every session of
        the user is revoked, and a fresh pair of a new session returned."""
        async with self._db.sessions() as session:
            stored = await session.scalar(select(Credential.password_hash)
                                          .where(Credential.user_id == user_id))
        if not await self._passwords.verify(stored, current):
            raise AuthError("wrong current password")
        new_hash = await self._passwords.hash(new)
        async with self._db.sessions.begin() as session:
            await session.merge(Credential(user_id=user_id, password_hash=new_hash))
            await revoke_sessions(session, user_id)
            pair = await self._new_session(session, user_id)
        log.info("user %s changed their password: every session revoked", user_id)
        return pair

    async def logout(self, identity: Identity, refresh_token: str | None) -> None:
        """Revoke the caller's session (the access token's `sid`) and, when given, the session
        of a refresh token of the same user; AuthError when neither names a session."""
        families = {identity.session_id} - {None}
        if refresh_token is not None:
            claims = self._codec.verify(refresh_token, REFRESH)
            if claims.user_id != identity.user_id:
                raise AuthError("refresh token of another user")
            families.add(claims.family)
        if not families:
            raise AuthError("this access token names no session: send the refresh_token")
        async with self._db.sessions.begin() as session:
            for family in families:
                await revoke_sessions(session, identity.user_id, family)

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
                await revoke_sessions(session, claims.user_id, family)
                log.warning("refresh token reused or revoked: family %s of user %s revoked",
                            family, claims.user_id)
        raise AuthError("refresh token already used, revoked or unknown")

    async def authenticate(self, token: str) -> Identity:
        """One query: the user exists and the token's session is not revoked. Tokens minted
        without a session (before sessions existed) are checked for their user alone."""
        identity = self.verify(token)
        if identity.session_id is None:
            live = await user_exists(self._db, identity.user_id)
        else:
            live = await session_is_live(self._db, identity.user_id, identity.session_id)
        if not live:
            raise AuthError("the token's user no longer exists or its session was revoked")
        return identity

    def verify(self, token: str) -> Identity:
        claims = self._codec.verify(token, ACCESS)
        if claims.family is not None and self._revocations.is_revoked(claims.family):
            raise AuthError("the token's session was revoked")
        return Identity(claims.user_id, float(claims.expires_at), claims.family)

    async def _new_session(self, session: AsyncSession, user_id: int) -> TokenPair:
        family = secrets.token_hex(16)
        open_session(session, user_id, family)
        return await self._issue_pair(session, user_id, family)

    async def _issue_pair(self, session: AsyncSession, user_id: int, family: str) -> TokenPair:
        access, _ = self._codec.issue(user_id, ACCESS, family=family)
        refresh, claims = self._codec.issue(user_id, REFRESH, family=family)
        session.add(RefreshToken(
            jti=claims.jti, family=family, user_id=user_id,
            expires_at=dt.datetime.fromtimestamp(claims.expires_at, dt.UTC),
        ))
        return TokenPair(access, refresh, self._codec.access_ttl)
