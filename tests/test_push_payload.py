"""The Web Push payload (protocol §13): `{"title", "body", "event"}` in at most 3,000 bytes."""

from __future__ import annotations

import os

import http_ece
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from chat.push import describe_message
from hub.push_crypto import PushKeyError, b64url, encrypt, public_key_b64
from hub.push_rules import MAX_PAYLOAD_BYTES, Notice, close_payload, push_payload

CREATED = "2026-12-07T10:00:00.123Z"


def test_a_small_event_is_carried_as_stored() -> None:
    data = '{"request_id":7,"total_rub":1234.50}'
    payload = push_payload(Notice("Exchange completed", "Total: 1234.50 RUB"), 3, "exchange.result",
                           data, CREATED)
    assert b'"data":{"request_id":7,"total_rub":1234.50}' in payload  # exact, not re-encoded
    assert orjson.loads(payload) == {
        "title": "Exchange completed", "body": "Total: 1234.50 RUB",
        "event": {"id": 3, "name": "exchange.result", "data": orjson.loads(data), "created_at": CREATED}}


@pytest.mark.parametrize("char", ["x", "é", "€", "😀", '"'])
def test_long_text_is_shortened_to_fit(char: str) -> None:
    text = char * 4000
    data = orjson.dumps({"id": 9, "chat_id": 4, "sender_username": "bob", "text": text}).decode()
    payload = push_payload(Notice("bob", text, "chat-4"), 12, "chat.message", data, CREATED)
    assert len(payload) <= MAX_PAYLOAD_BYTES
    decoded = orjson.loads(payload)
    assert decoded["body"].endswith("…") and decoded["body"].startswith(char * 100)
    assert decoded["event"]["data"]["chat_id"] == 4  # what the service worker opens survives
    assert decoded["event"]["data"]["text"].endswith("…")


def test_data_without_long_strings_is_dropped_rather_than_the_body() -> None:
    data = orjson.dumps({"numbers": list(range(2000))}).decode()
    decoded = orjson.loads(push_payload(Notice("n", "the words"), 1, "x.y", data, CREATED))
    assert decoded["body"] == "the words"
    assert decoded["event"] == {"id": 1, "name": "x.y", "data": {}, "created_at": CREATED}


@pytest.mark.parametrize("size", [0, 1, 117, MAX_PAYLOAD_BYTES])
def test_encrypted_payload_decrypts_with_http_ece(size: int) -> None:
    """hub/push_crypto.py writes RFC 8291 itself; an independent implementation reads it."""
    key, auth = ec.generate_private_key(ec.SECP256R1()), os.urandom(16)
    payload = os.urandom(size)
    first = encrypt(payload, public_key_b64(key), b64url(auth))
    second = encrypt(payload, public_key_b64(key), b64url(auth))
    assert first[:16] != second[:16] and first[21:86] != second[21:86]  # new salt and key each time
    for body in (first, second):
        assert http_ece.decrypt(body, private_key=key, auth_secret=auth, version="aes128gcm") == payload


def test_unusable_subscription_keys_are_a_push_key_error() -> None:
    key = public_key_b64(ec.generate_private_key(ec.SECP256R1()))
    for p256dh, auth in (("AAAA", b64url(os.urandom(16))), ("%%%", b64url(os.urandom(16))),
                         (key, "%%%")):
        with pytest.raises(PushKeyError):
            encrypt(b"{}", p256dh, auth)


def test_a_chat_message_is_closed_by_a_read_that_reaches_it() -> None:
    """The chat's rule gives each message's notice its chat's topic and the message id as the
    position a read must reach; the close push names that topic, the notifications' tag."""
    notice = describe_message({"id": 41, "chat_id": 7, "sender_username": "bob", "text": "hi"})
    assert (notice.topic, notice.position) == ("chat-7", 41)
    assert orjson.loads(close_payload("chat-7")) == {"close": "chat-7"}
