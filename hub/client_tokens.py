"""Where the Python client's access tokens come from: a fixed token, or a username and password
that log in and refresh over REST (protocol §3)."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson


class RefreshFailed(Exception):
    """The token provider's credentials were rejected; no new access token can be had."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_at: float | None = None  # unix time; None when unknown (no refresh is scheduled)


class TokenProvider(Protocol):
    """Where access tokens come from. `refresh` raises RefreshFailed when the credentials are
    rejected; any other exception is taken as transient and retried after a back-off."""

    async def current(self) -> AccessToken: ...

    async def refresh(self) -> AccessToken: ...


class StaticToken:
    """One access token that cannot be refreshed: the connection ends (4001) when it expires."""

    def __init__(self, token: str, expires_at: float | None = None) -> None:
        self._token = AccessToken(token, expires_at)

    async def current(self) -> AccessToken:
        return self._token

    async def refresh(self) -> AccessToken:
        raise RefreshFailed("a static token cannot be refreshed")


class PasswordLogin:
    """Logs in over REST (`/api/v1/auth/login`) and refreshes with the refresh token, logging in
    again when the refresh token is rejected. Owns `http` only when it created it."""

    def __init__(self, api_url: str, username: str, password: str, *,
                 http: httpx.AsyncClient | None = None, timeout: float = 10.0) -> None:
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(base_url=api_url, timeout=timeout)
        self._credentials = {"username": username, "password": password}
        self._access: AccessToken | None = None
        self._refresh_token: str | None = None
        self._lock = asyncio.Lock()

    async def current(self) -> AccessToken:
        async with self._lock:
            if self._access is None:
                await self._store(await self._http.post("/api/v1/auth/login", json=self._credentials))
            assert self._access is not None
            return self._access

    async def refresh(self) -> AccessToken:
        async with self._lock:
            if self._refresh_token is not None:
                answer = await self._http.post("/api/v1/auth/refresh",
                                               json={"refresh_token": self._refresh_token})
                if answer.status_code != 401:
                    await self._store(answer)
                    assert self._access is not None
                    return self._access
            await self._store(await self._http.post("/api/v1/auth/login", json=self._credentials))
            assert self._access is not None
            return self._access

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _store(self, answer: httpx.Response) -> None:
        if answer.status_code in (401, 403, 422):
            raise RefreshFailed(f"login refused: HTTP {answer.status_code} {answer.text[:200]}")
        answer.raise_for_status()  # 5xx and the like: transient
        body = answer.json()
        token = str(body["access_token"])
        # the JWT's own `exp` (whole seconds, so up to 1 s before now + expires_in)
        expires_at = jwt_expiry(token) or time.time() + float(body["expires_in"]) - 1.0
        self._access = AccessToken(token, expires_at)
        self._refresh_token = body["refresh_token"]


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (only to schedule a refresh)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
