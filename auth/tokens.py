"""JWT access and refresh tokens. The only module that imports python-jose.

A token must be the compact form, three unpadded base64url segments, before jose sees it; the
algorithm is pinned to the configured one, and `exp`, `iat`, `sub`, `jti` and `type` are
required; every jose error becomes `AuthError`.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from jose import JWTError, jwt

from hub.identity import AuthError

ACCESS = "access"
REFRESH = "refresh"
MAX_USER_ID = 2**31 - 1  # users.id is a 32-bit integer column
MAX_TOKEN_LENGTH = 4096
# Exactly header.payload.signature in unpadded base64url: jose alone lets `=` padding, other
# characters and whitespace through, so that many strings verify as one token.
COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: int
    type: str
    jti: str
    expires_at: int
    family: str | None  # the session: `fam` of a refresh token, `sid` of an access token


class TokenCodec:
    """Signs and verifies the hub's tokens with one secret and one algorithm."""

    def __init__(self, secret: str, algorithm: str, access_ttl: int, refresh_ttl: int) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue(self, user_id: int, token_type: str, *, family: str | None = None,
              now: int | None = None) -> tuple[str, Claims]:
        issued = int(time.time()) if now is None else now
        ttl = self.access_ttl if token_type == ACCESS else self.refresh_ttl
        claims = Claims(user_id, token_type, secrets.token_hex(16), issued + ttl, family)
        payload: dict[str, Any] = {
            "sub": str(user_id), "iat": issued, "exp": claims.expires_at,
            "jti": claims.jti, "type": token_type,
        }
        if family is not None:
            payload["fam" if token_type == REFRESH else "sid"] = family
        return jwt.encode(payload, self._secret, algorithm=self._algorithm), claims

    def verify(self, token: str, token_type: str) -> Claims:
        """The claims of a valid, unexpired token of `token_type`; raises AuthError otherwise."""
        if (not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH
                or COMPACT_JWT.fullmatch(token) is None
                or any(len(part) % 4 == 1 for part in token.split("."))):
            raise AuthError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != self._algorithm:
                raise AuthError("token signed with another algorithm")
            payload = jwt.decode(
                token, self._secret, algorithms=[self._algorithm],
                options={"require_exp": True, "require_iat": True, "require_sub": True,
                         "require_jti": True, "verify_aud": False},
            )
        except JWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        if payload.get("type") != token_type:
            raise AuthError(f"not an {token_type} token")
        sub, jti, exp = payload.get("sub"), payload.get("jti"), payload.get("exp")
        fam = payload.get("fam" if token_type == REFRESH else "sid")
        if not (isinstance(sub, str) and sub.isascii() and sub.isdigit() and 0 < int(sub) <= MAX_USER_ID):
            raise AuthError("token subject is not a user id")
        if not isinstance(jti, str) or not jti or not isinstance(exp, int):
            raise AuthError("token lacks jti or exp")
        if token_type == REFRESH and not isinstance(fam, str):
            raise AuthError("refresh token lacks its family")
        if fam is not None and not (isinstance(fam, str) and 0 < len(fam) <= 32):
            raise AuthError("token session is not a session id")
        return Claims(int(sub), token_type, jti, exp, fam if isinstance(fam, str) else None)
