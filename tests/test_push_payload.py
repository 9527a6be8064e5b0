"""The Web Push payload (protocol §13): `{"title", "body", "event"}` in at most 3,000 bytes."""

from __future__ import annotations

import orjson
import pytest

from hub.push_rules import MAX_PAYLOAD_BYTES, Notice, push_payload

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
