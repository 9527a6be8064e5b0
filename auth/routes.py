"""REST calls of accounts (§3 of the protocol)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from auth.service import Accounts, TokenPair, UsernameTaken
from hub.db import Database
from hub.errors import Conflict, Forbidden, Unauthorized
from hub.http import api, has_body, read_json, read_query
from hub.identity import AuthError, Identity, authenticate_request
from hub.ratelimit import Limit, RateLimiter, client_address
from hub.responses import json_response
from hub.users import get_user, search_users

Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")]
Password = Annotated[str, Field(min_length=8, max_length=128)]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    password: Password


class LoginBody(BaseModel):
    """A name that could never be registered is a 422, not a lookup (it never reaches the DB)."""

    model_config = ConfigDict(extra="forbid")
    username: Username
    password: Annotated[str, Field(min_length=1, max_length=128)]


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class LogoutBody(BaseModel):
    """Optional: a refresh token of the caller whose session ends too (e.g. when the access
    token was minted before sessions existed)."""

    model_config = ConfigDict(extra="forbid")
    refresh_token: Annotated[str | None, Field(min_length=1, max_length=4096)] = None


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: Annotated[str, Field(min_length=1, max_length=128)]
    new_password: Password


class UserOut(BaseModel):
    id: int
    username: str


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class UserQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Any printable text; `%` and `_` match themselves. Control characters (NUL above all,
    # which PostgreSQL refuses in text) are a 422.
    q: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[^\x00-\x1f\x7f]+$")]


class UserList(BaseModel):
    items: list[UserOut]


class AuthApi:
    """Routes of §3, over the `Accounts` service. Register, login and refresh take one token of
    `attempts` per client address before anything else (a malformed body counts too); a login
    also holds one of `failures` for its username while the password is checked, given back
    when the password was right, so that only failures use the username's budget."""

    def __init__(self, accounts: Accounts, db: Database, limiter: RateLimiter, attempts: Limit,
                 failures: Limit) -> None:
        self._accounts = accounts
        self._db = db
        self._limiter = limiter
        self._attempts = attempts
        self._failures = failures

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/auth/register", self.register, methods=["POST"]),
            Route("/api/v1/auth/login", self.login, methods=["POST"]),
            Route("/api/v1/auth/refresh", self.refresh, methods=["POST"]),
            Route("/api/v1/auth/logout", self.logout, methods=["POST"]),
            Route("/api/v1/auth/password", self.password, methods=["POST"]),
            Route("/api/v1/auth/me", self.me, methods=["GET"]),
            Route("/api/v1/users", self.users, methods=["GET"]),
        ]

    @api(summary="Create an account", tag="auth", body=Credentials, response=UserOut,
         status=201, errors=(409, 413, 415, 422, 429))
    async def register(self, request: Request) -> Response:
        await self._attempt(request)
        body = await read_json(request, Credentials)
        try:
            user = await self._accounts.register(body.username, body.password)
        except UsernameTaken:
            raise Conflict(f"username {body.username!r} is taken") from None
        return json_response(UserOut(id=user.id, username=user.username).model_dump(), 201)

    @api(summary="Log in with username and password", tag="auth", body=LoginBody,
         response=TokensOut, errors=(401, 413, 415, 422, 429))
    async def login(self, request: Request) -> Response:
        await self._attempt(request)
        body = await read_json(request, LoginBody)
        account = body.username.lower()
        await self._limiter.enforce(self._failures, account,
                                    "too many failed logins for this username")
        try:
            pair = await self._accounts.login(body.username, body.password)
        except AuthError:
            raise Unauthorized("wrong username or password") from None
        await self._limiter.give_back(self._failures, account)
        return _tokens(pair.access_token, pair.refresh_token, pair.expires_in)

    @api(summary="Exchange a refresh token for a new pair (each refresh token works once)",
         tag="auth", body=RefreshBody, response=TokensOut, errors=(401, 413, 415, 422, 429))
    async def refresh(self, request: Request) -> Response:
        await self._attempt(request)
        body = await read_json(request, RefreshBody)
        try:
            pair = await self._accounts.refresh(body.refresh_token)
        except AuthError:
            raise Unauthorized("refresh token is invalid, expired or already used") from None
        return _tokens(pair.access_token, pair.refresh_token, pair.expires_in)

    @api(summary="Log out: revoke the caller's session (its refresh tokens and, within a "
                 "second on every process, its access tokens and open sockets)",
         tag="auth", body=LogoutBody, body_required=False, status=204, auth="user",
         errors=(401, 413, 415, 422))
    async def logout(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._accounts)
        body = await read_json(request, LogoutBody) if has_body(request) else LogoutBody()
        try:
            await self._accounts.logout(identity, body.refresh_token)
        except AuthError as exc:
            raise Unauthorized(str(exc)) from None
        return Response(status_code=204)

    @api(summary="Change the password: every session of the user is revoked and a fresh "
                 "token pair of a new session returned",
         tag="auth", body=PasswordChange, response=TokensOut, auth="user",
         errors=(401, 403, 413, 415, 422, 429))
    async def password(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._accounts)
        await self._attempt(request)
        body = await read_json(request, PasswordChange)
        pair = await self._with_failure_budget(identity, body.current_password, body.new_password)
        return _tokens(pair.access_token, pair.refresh_token, pair.expires_in)

    async def _with_failure_budget(self, identity: Identity, current: str, new: str) -> TokenPair:
        """A wrong current password spends the username's failed-login budget, as at login."""
        username = await self._accounts.username(identity.user_id)
        if username is None:
            raise Unauthorized("the token's user no longer exists")
        await self._limiter.enforce(self._failures, username.lower(),
                                    "too many failed logins for this username")
        try:
            pair = await self._accounts.change_password(identity.user_id, current, new)
        except AuthError:
            raise Forbidden("the current password is wrong") from None
        await self._limiter.give_back(self._failures, username.lower())
        return pair

    @api(summary="The signed-in user", tag="auth", response=UserOut, auth="user", errors=(401,))
    async def me(self, request: Request) -> Response:
        identity = await self._identity(request)
        async with self._db.sessions() as session:
            user = await get_user(session, identity)
        if user is None:
            raise Unauthorized("the token's user no longer exists")
        return json_response({"id": user.id, "username": user.username})

    @api(summary="Find users by name prefix (at most 20)", tag="auth", query=UserQuery,
         response=UserList, auth="user", errors=(401, 422))
    async def users(self, request: Request) -> Response:
        await self._identity(request)
        query = read_query(request, UserQuery)
        async with self._db.sessions() as session:
            found = await search_users(session, query.q, limit=20)
        return json_response({"items": [{"id": u.id, "username": u.username} for u in found]})

    async def _attempt(self, request: Request) -> None:
        await self._limiter.enforce(self._attempts, client_address(request),
                                    "too many sign-in attempts from this address")

    async def _identity(self, request: Request) -> int:
        return (await authenticate_request(request, self._accounts)).user_id


def _tokens(access: str, refresh: str, expires_in: int) -> Response:
    return json_response({"access_token": access, "refresh_token": refresh,
                          "token_type": "bearer", "expires_in": expires_in})
