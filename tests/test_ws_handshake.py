"""The upgrade request's answer: a plain request is answered by the hub's own code with the
bytes websockets' server would write; everything else is websockets' to answer."""

from __future__ import annotations

import re

import pytest
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from hub.metrics import Metrics
from hub.ws_handshake import _plain_accept, upgrade

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ALLOWED = "https://app.example"


def _request(target: bytes = b"/ws", *headers: bytes, method: bytes = b"GET",
             version: bytes = b"HTTP/1.1") -> bytes:
    lines = [method + b" " + target + b" " + version, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


PLAIN = (b"Host: 127.0.0.1:8000", b"Upgrade: websocket", b"Connection: Upgrade",
         b"Sec-WebSocket-Key: " + KEY, b"Sec-WebSocket-Version: 13")


def _websockets_answer(data: bytes) -> bytes:
    """What websockets alone answers (the reference)."""
    server = ServerProtocol()
    server.receive_data(data)
    request = server.events_received()[0]
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    return b"".join(server.data_to_send())


def _origin_allowed(origin: str | None) -> bool:
    return origin is None or origin == ALLOWED


def _no_date(answer: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]*\r\n", b"", answer)


@pytest.mark.parametrize("request_bytes", [
    _request(b"/ws", *PLAIN),
    _request(b"/ws?x=1", *PLAIN, b"Origin: " + ALLOWED.encode()),
    _request(b"/ws", b"host: h", b"upgrade: WebSocket", b"connection: keep-alive, Upgrade",
             b"sec-websocket-key: " + KEY, b"sec-websocket-version: 13", b"User-Agent: x"),
    _request(b"/ws", *PLAIN, b"Sec-WebSocket-Extensions: permessage-deflate"),
    _request(b"/ws", *PLAIN, b"Sec-WebSocket-Protocol: chat"),
])
def test_a_plain_request_gets_the_answer_websockets_would_give(request_bytes: bytes) -> None:
    answer = _plain_accept(request_bytes, _origin_allowed)
    assert answer is not None
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\nDate: ")
    assert _no_date(answer) == _no_date(_websockets_answer(request_bytes))


@pytest.mark.parametrize("request_bytes", [
    _request(b"/other", *PLAIN),
    _request(b"/ws", *PLAIN, method=b"POST"),
    _request(b"/ws", *PLAIN, version=b"HTTP/1.0"),
    _request(b"/ws", *PLAIN, b"Origin: https://evil.example"),
    _request(b"/ws", *PLAIN, b"Origin: " + ALLOWED.encode(), b"Origin: " + ALLOWED.encode()),
    _request(b"/ws", *PLAIN[:1], *PLAIN[2:]),  # no Upgrade
    _request(b"/ws", *PLAIN[:2], *PLAIN[3:]),  # no Connection
    _request(b"/ws", *PLAIN, b"Upgrade: websocket"),
    _request(b"/ws", *PLAIN[:3], b"Sec-WebSocket-Key: c2hvcnQ=", PLAIN[4]),  # 5 bytes
    _request(b"/ws", *PLAIN[:3], b"Sec-WebSocket-Key: not base64!!", PLAIN[4]),
    _request(b"/ws", *PLAIN[:4], b"Sec-WebSocket-Version: 8"),
    _request(b"/ws", *PLAIN[:4]),  # no version
    _request(b"/ws", *PLAIN, b"X-Bad : folded"),
    _request(b"/ws", *PLAIN)[:-2],  # incomplete
    _request(b"/ws", *PLAIN) + b"extra",
])
def test_anything_else_is_left_to_websockets(request_bytes: bytes) -> None:
    assert _plain_accept(request_bytes, _origin_allowed) is None


def test_upgrade_hands_back_an_open_frame_protocol_either_way() -> None:
    metrics = Metrics(None)
    for data in (_request(b"/ws", *PLAIN), _request(b"/ws", *PLAIN, b"X-Note: \t spaced \t")):
        answer = upgrade(data, 1 << 16, _origin_allowed, metrics)
        assert answer.answer.startswith(b"HTTP/1.1 101 ")
        assert isinstance(answer.protocol, Protocol)
        assert answer.protocol.side is Side.SERVER
        assert answer.protocol.state is State.OPEN
    refused = upgrade(_request(b"/ws", *PLAIN, b"Origin: https://evil.example"), 1 << 16,
                      _origin_allowed, metrics)
    assert refused.answer.startswith(b"HTTP/1.1 403 ")
    assert refused.protocol is None
