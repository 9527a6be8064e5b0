"""Who is calling: the identity the core receives from the auth feature, never from jose itself.

The core asks an `Authenticator` (implemented by `auth`, passed in by the composition root)
to turn an access token into an `Identity`; a connection enforces the identity's expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from hub.errors import Unauthorized
from hub.http import bearer_token


class AuthError(Exception):
    """The token is missing, malformed, expired, of the wrong type or of an unknown user."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    expires_at: float  # unix time at which the access token stops being valid
    session_id: str | None = None  # the sign-in it belongs to; revoking it ends the identity


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Identity:
        """The identity of a valid access token of an existing user; raises AuthError otherwise."""
        ...

    def verify(self, token: str) -> Identity:
        """The identity of a valid access token, from its signature and claims alone (and the
        sessions this process knows to be revoked): no database read, so the caller must itself
        find out whether the user still exists."""
        ...


async def authenticate_request(request: Request, authenticator: Authenticator) -> Identity:
    """The caller's identity from `Authorization: Bearer <access_token>`; 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("send Authorization: Bearer <access_token>")
    try:
        return await authenticator.authenticate(token)
    except AuthError:
        raise Unauthorized() from None
