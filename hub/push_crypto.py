"""Web Push cryptography: the VAPID key (RFC 8292) and the `aes128gcm` payload (RFC 8291).

The only module that imports `py_vapid`; key errors become `ConfigError` (a bad key at
start-up) or `PushKeyError` (a subscription's keys that cannot be used). The payload is
encrypted with `cryptography`'s primitives as RFC 8291 §3.4 and RFC 8188 §2 write it (one
record, HKDF-SHA256 with single-block outputs as HMACs); `http_ece`'s general code for every
version of the format cost about a third more per push. The tests decrypt with `http_ece`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
import time
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from py_vapid import Vapid02  # type: ignore[import-untyped]

from hub.env import ConfigError

VAPID_LIFETIME = 12 * 3600  # a signed token is reused this long per push service (RFC 8292 allows 24 h)


class PushKeyError(ValueError):
    """A subscription's `p256dh` or `auth` is not a usable key."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ValueError on anything else."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64url: {exc}") from exc


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key of `VAPID_PRIVATE_KEY`: 32 raw bytes in base64url, or PEM."""
    text = text.strip().replace("\\n", "\n")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode(text)
            if len(raw) != 32:
                raise ValueError(f"{len(raw)} bytes, not 32")
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise ConfigError(f"VAPID_PRIVATE_KEY is not a P-256 private key ({exc}); make one with "
                          "`hub vapid-keys`") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key; make one with "
                          "`hub vapid-keys`")
    return key


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The application server key browsers subscribe with: the uncompressed point, base64url."""
    return b64url(key.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint))


def generate_vapid_key() -> str:
    """A new private key as `VAPID_PRIVATE_KEY` takes it (32 raw bytes, base64url)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url(key.private_numbers().private_value.to_bytes(32, "big"))


class VapidSigner:
    """Signs the VAPID `Authorization` header per push-service origin, reusing each token for
    `VAPID_LIFETIME` seconds (signing is the costly part of a push after encryption)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        self._vapid = Vapid02(private_key=key)
        self._subject = subject
        self._cache: dict[str, tuple[float, str]] = {}

    def authorization(self, endpoint: str, now: float | None = None) -> str:
        parts = urlsplit(endpoint)
        audience = f"{parts.scheme}://{parts.netloc}"
        now = time.time() if now is None else now
        cached = self._cache.get(audience)
        if cached is not None and cached[0] > now:
            return cached[1]
        expires = int(now) + 23 * 3600  # under the 24 h RFC 8292 allows, whatever the clock skew
        header = str(self._vapid.sign({"aud": audience, "sub": self._subject, "exp": expires})
                     ["Authorization"])
        self._cache[audience] = (now + VAPID_LIFETIME, header)
        return header


RECORD_SIZE = 4096  # the one record's size in the header (RFC 8188 §2); payloads are ≤ 3,000 bytes
_CURVE = ec.SECP256R1()
_X962 = serialization.Encoding.X962
_UNCOMPRESSED = serialization.PublicFormat.UncompressedPoint


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """The RFC 8291 `aes128gcm` body of `payload` for one subscription's keys, with a new
    ECDH key pair and salt for each message."""
    try:
        receiver_bytes = b64url_decode(p256dh)
        receiver = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, receiver_bytes)
        secret = b64url_decode(auth)
    except ValueError as exc:
        raise PushKeyError(str(exc)) from exc
    if len(secret) != 16:
        raise PushKeyError(f"auth is {len(secret)} bytes, not 16")
    if len(payload) + 17 > RECORD_SIZE:
        raise ValueError(f"a payload of {len(payload)} bytes does not fit one record")
    server_key = ec.generate_private_key(_CURVE)
    server_public = server_key.public_key().public_bytes(_X962, _UNCOMPRESSED)
    shared = server_key.exchange(ec.ECDH(), receiver)
    # RFC 8291 §3.4: IKM = HKDF(auth, ecdh_secret, "WebPush: info" || 0 || ua_public || as_public, 32)
    prk_key = hmac.digest(secret, shared, "sha256")
    ikm = hmac.digest(prk_key, b"WebPush: info\x00" + receiver_bytes + server_public + b"\x01",
                      "sha256")
    # RFC 8188 §2.2-2.3: CEK and NONCE from HKDF(salt, IKM)
    salt = os.urandom(16)
    prk = hmac.digest(salt, ikm, "sha256")
    cek = hmac.digest(prk, b"Content-Encoding: aes128gcm\x00\x01", "sha256")[:16]
    nonce = hmac.digest(prk, b"Content-Encoding: nonce\x00\x01", "sha256")[:12]
    header = salt + struct.pack("!IB", RECORD_SIZE, len(server_public)) + server_public
    return header + AESGCM(cek).encrypt(nonce, payload + b"\x02", None)  # 2: the last record


def check_subscription_keys(p256dh: str, auth: str) -> str | None:
    """Why the keys cannot be used (None when they can): `p256dh` an uncompressed P-256 point,
    `auth` 16 bytes."""
    try:
        point = b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        return "keys.p256dh must be an uncompressed P-256 public key in base64url"
    if len(point) != 65:
        return "keys.p256dh must be an uncompressed P-256 public key (65 bytes) in base64url"
    try:
        secret = b64url_decode(auth)
    except ValueError:
        return "keys.auth must be base64url"
    if len(secret) != 16:
        return "keys.auth must be 16 bytes in base64url"
    return None
