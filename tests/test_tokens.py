"""The token codec's own verification (hmac, not jose) accepts and refuses exactly what jose's
`jwt.decode` with the codec's options does, for tokens that pass the compact-form check."""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest
from jose import JWTError, jws, jwt

from auth.tokens import ACCESS, REFRESH, TokenCodec
from hub.identity import AuthError

SECRET = "a test secret that is long enough " + "x" * 30
OPTIONS = {"require_exp": True, "require_iat": True, "require_sub": True, "require_jti": True,
           "verify_aud": False}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "7", "iat": now, "exp": now + 600, "jti": "j" * 32,
                              "type": ACCESS, "sid": "s" * 32}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(claims: Any, algorithm: str = "HS256", secret: str = SECRET,
            header: dict[str, Any] | None = None) -> str:
    """A token over any JSON payload, signed by jose; with `header`, that header in place of
    jose's (and jose's signature of the original, which such a header must not need)."""
    token: str = jws.sign(orjson.dumps(claims), secret, algorithm=algorithm)
    if header is None:
        return token
    _, body, signature = token.split(".")
    return f"{_b64(orjson.dumps(header))}.{body}.{signature}"


def _jose_accepts(token: str, algorithm: str) -> bool:
    try:
        jwt.decode(token, SECRET, algorithms=[algorithm], options=OPTIONS)
    except JWTError:
        return False
    return True


now = int(time.time())
CASES = {
    "valid": _claims(),
    "expired a second ago": _claims(exp=now - 1),
    "expiring this second": _claims(exp=now),
    "exp a float in the future": _claims(exp=now + 600.5),
    "exp a string": _claims(exp=str(now + 600)),
    "exp missing": _claims(exp=None),
    "iat missing": _claims(iat=None),
    "iat a string": _claims(iat="yesterday"),
    "iat a float": _claims(iat=now - 0.5),
    "nbf in the future": _claims(nbf=now + 60),
    "nbf now": _claims(nbf=now),
    "nbf not a number": _claims(nbf="soon"),
    "sub missing": _claims(sub=None),
    "jti missing": _claims(jti=None),
    "aud present": _claims(aud="elsewhere"),
    "payload a list": [1, 2, 3],
    "payload a string": "claims",
}


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("case", list(CASES))
def test_verify_agrees_with_jose(case: str, algorithm: str) -> None:
    codec = TokenCodec(SECRET, algorithm, 600, 3600)
    token = _signed(CASES[case], algorithm)
    try:
        codec.verify(token, ACCESS)
        accepted = True
    except AuthError:
        accepted = False
    if _jose_accepts(token, algorithm) and isinstance(CASES[case], dict):
        # jose's decode leaves these to the caller; the codec's own claim rules refuse them
        stricter = case in {"exp a float in the future", "exp a string"}
        assert accepted is not stricter, case
    else:
        assert not accepted, case


@pytest.mark.parametrize(("label", "token"), [
    ("another secret", _signed(_claims(), secret="another secret " + "y" * 40)),
    ("another algorithm", _signed(_claims(), "HS512")),
    ("alg none", _signed(_claims(), header={"alg": "none"})),
    ("header a list", _signed(_claims(), header=["HS256"])),  # type: ignore[arg-type]
    ("signature cut", _signed(_claims())[:-2]),
    ("signature of another payload", ".".join([*_signed(_claims(sub="8")).split(".")[:2],
                                                _signed(_claims()).split(".")[2]])),
    ("header not base64 JSON", "e30x." + _signed(_claims()).split(".", 1)[1]),
])
def test_bad_signatures_and_headers_are_refused(label: str, token: str) -> None:
    with pytest.raises(AuthError):
        TokenCodec(SECRET, "HS256", 600, 3600).verify(token, ACCESS)
    assert not _jose_accepts(token, "HS256"), label


def test_issued_tokens_verify_and_keep_their_claims() -> None:
    codec = TokenCodec(SECRET, "HS384", 600, 3600)
    token, claims = codec.issue(42, REFRESH, family="f" * 32)
    assert codec.verify(token, REFRESH) == claims
    with pytest.raises(AuthError):
        codec.verify(token, ACCESS)


def test_an_unsupported_algorithm_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="HS256"):
        TokenCodec(SECRET, "RS256", 600, 3600)
