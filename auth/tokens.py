"""JWT access and refresh tokens. The only module that imports python-jose.

jose signs them; they are verified here with `hmac` (the configured algorithm is one of HS256,
HS384, HS512), as jose would verify them but at a tenth of its cost, since every socket that
connects verifies one: a token must be the compact form, three unpadded base64url segments,
its header a JSON object naming the configured algorithm, its signature equal (compared in
constant time) to the HMAC of the first two segments, its payload a JSON object with `exp`,
`iat`, `sub`, `jti` and `type`, not expired and not before its `nbf`. Every failure is `AuthError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from jose import jwt

from hub.identity import AuthError

ACCESS = "access"
REFRESH = "refresh"
MAX_USER_ID = 2**31 - 1  # users.id is a 32-bit integer column
MAX_TOKEN_LENGTH = 4096
# Exactly header.payload.signature in unpadded base64url: jose alone lets `=` padding, other
# characters and whitespace through, so that many strings verify as one token.
COMPACT_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


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
        if algorithm not in DIGESTS:
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}: use one of {', '.join(DIGESTS)}")
        self._secret = secret
        self._algorithm = algorithm
        self._mac = hmac.new(secret.encode(), digestmod=DIGESTS[algorithm])
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
        payload = self._signed_payload(token)
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

    def _signed_payload(self, token: str) -> dict[str, Any]:
        """The payload of a compact token whose header and signature are right and whose time
        claims hold now (`exp`, `iat` and `nbf`, with jose's rules: whole seconds, no leeway)."""
        header_part, payload_part, signature_part = token.split(".")
        try:
            header = orjson.loads(_b64decode(header_part))
            signature = _b64decode(signature_part)
            mac = self._mac.copy()
            mac.update(f"{header_part}.{payload_part}".encode())
            if not isinstance(header, dict) or header.get("alg") != self._algorithm:
                raise AuthError("token signed with another algorithm")
            if not hmac.compare_digest(mac.digest(), signature):
                raise AuthError("invalid token: signature verification failed")
            payload = orjson.loads(_b64decode(payload_part))
        except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
            raise AuthError("invalid token: not JSON in base64url") from None
        if not isinstance(payload, dict):
            raise AuthError("invalid token: the payload is not a JSON object")
        now = int(time.time())
        for claim in ("exp", "iat"):
            if claim not in payload:
                raise AuthError(f"invalid token: {claim} is required")
        for claim in ("exp", "iat", "nbf"):
            value = payload.get(claim)
            if claim in payload and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise AuthError(f"invalid token: {claim} must be a number")
        if payload["exp"] < now:  # as jose's int(exp) < now, for a float too
            raise AuthError("invalid token: signature has expired")
        if "nbf" in payload and payload["nbf"] >= now + 1:  # as jose's int(nbf) > now
            raise AuthError("invalid token: not yet valid (nbf)")
        return payload


def _b64decode(segment: str) -> bytes:
    """An unpadded base64url segment (its alphabet already checked) as bytes."""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
