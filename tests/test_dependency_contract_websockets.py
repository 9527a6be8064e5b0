"""What the hub relies on inside websockets' sans-I/O layer (hub/ws.py, hub/ws_socket.py), beyond
its documented API, checked on the installed version: `ServerProtocol`'s handshake, frames
handed over one by one (fragments not reassembled), pings answered, close and EOF signalled in
`data_to_send()`. See tests/test_dependency_contract.py for the pins and how to read a failure."""

from __future__ import annotations

import base64
import hashlib

from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol

from tests.test_dependency_contract import KEY, LOG, MAX_SIZE, broken, upgrade_request

# websockets: the sans-I/O layer -------------------------------------------------------------


def _server_handshake(request: bytes) -> tuple[ServerProtocol, Request]:
    server = ServerProtocol(max_size=MAX_SIZE, logger=LOG)
    server.receive_data(request)
    requests = [e for e in server.events_received() if isinstance(e, Request)]
    assert len(requests) == 1, broken("websockets", "ServerProtocol.events_received (a Request)",
                                      "hub/ws.py (HubSocket._handshake)", requests)
    return server, requests[0]


def test_websockets_server_protocol_accepts_and_rejects_handshakes() -> None:
    user = "hub/ws.py (HubSocket._handshake)"
    server, request = _server_handshake(upgrade_request("/ws?x=1"))
    assert (request.path, request.headers.get("Origin")) == ("/ws?x=1", "https://app.example"), broken(
        "websockets", "Request.path / Request.headers", user, (request.path, request.headers))
    response = server.accept(request)
    server.send_response(response)
    sent = b"".join(server.data_to_send())
    accept = base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert response.status_code == 101 and sent.startswith(b"HTTP/1.1 101") and accept in sent, broken(
        "websockets", "ServerProtocol.accept / send_response / data_to_send", user, sent[:300])
    server, request = _server_handshake(upgrade_request())
    refused = server.reject(403, "Forbidden: origin not allowed\n")
    server.send_response(refused)
    sent = b"".join(server.data_to_send())
    assert refused.status_code == 403 and sent.startswith(b"HTTP/1.1 403") and sent.endswith(
        b"Forbidden: origin not allowed\n"), broken("websockets", "ServerProtocol.reject", user, sent[:300])


def _open_pair() -> tuple[Protocol, Protocol]:
    """The hub's side as hub/ws.py makes it (after its own handshake), and a client."""
    hub = Protocol(Side.SERVER, state=State.OPEN, max_size=MAX_SIZE, logger=LOG)
    client = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    return hub, client


def _deliver(source: Protocol, target: Protocol) -> list[Frame]:
    for chunk in source.data_to_send():
        if chunk:
            target.receive_data(chunk)
        else:
            target.receive_eof()
    return [e for e in target.events_received() if isinstance(e, Frame)]


def test_websockets_protocol_hands_over_frames_one_by_one() -> None:
    user = "hub/ws.py (HubSocket.data_received, _frame: it reassembles fragments itself)"
    hub, client = _open_pair()
    client.send_text(b'{"type":', fin=False)
    client.send_continuation(b'"ping"}', fin=True)
    client.send_binary(b"\x01")
    client.send_ping(b"early")
    got = [(f.opcode, f.fin, bytes(f.data)) for f in _deliver(client, hub)]
    assert got == [(Opcode.TEXT, False, b'{"type":'), (Opcode.CONT, True, b'"ping"}'),
                   (Opcode.BINARY, True, b"\x01"), (Opcode.PING, True, b"early")], broken(
        "websockets", "Protocol.events_received (one Frame per frame, fragments as they come)", user, got)
    answers = [(f.opcode, bytes(f.data)) for f in _deliver(hub, client)]
    assert answers == [(Opcode.PONG, b"early")], broken(
        "websockets", "Protocol's automatic pong to a ping", "hub/ws.py (it never answers pings itself)",
        answers)
    hub.send_ping(b"hub")
    assert [(f.opcode, bytes(f.data)) for f in _deliver(hub, client)] == [(Opcode.PING, b"hub")]
    pongs = [(f.opcode, bytes(f.data)) for f in _deliver(client, hub)]
    assert pongs == [(Opcode.PONG, b"hub")], broken(
        "websockets", "Protocol.events_received (pongs handed over)", "hub/ws.py (keepalive)", pongs)


def _closes(frames: list[Frame]) -> list[tuple[int, str]]:
    closes = [Close.parse(f.data) for f in frames if f.opcode is Opcode.CLOSE]
    return [(c.code, c.reason) for c in closes]


def test_websockets_protocol_signals_the_close_and_eof_in_data_to_send() -> None:
    user = "hub/ws.py (HubSocket._close, keepalive, _flush: an empty chunk means close the transport)"
    hub, client = _open_pair()
    hub.send_close(4009, "slow consumer")
    first = list(hub.data_to_send())
    assert first and first[-1] != b"", broken("websockets", "Protocol.send_close (no EOF before the reply)",
                                               user, first)
    client.receive_data(b"".join(first))
    assert [(c.code, c.reason) for c in [client.close_rcvd] if c] == [(4009, "slow consumer")], broken(
        "websockets", "Protocol.send_close (the close frame)", user, client.close_rcvd)
    for chunk in client.data_to_send():
        if chunk:
            hub.receive_data(chunk)
    assert b"" in list(hub.data_to_send()), broken(
        "websockets", "Protocol.data_to_send (b'' once the closing handshake completes)", user, "no EOF")

    hub, client = _open_pair()
    hub.fail(1011, "keepalive ping timeout")
    chunks = list(hub.data_to_send())
    assert chunks and chunks[-1] == b"", broken("websockets", "Protocol.fail (a close frame, then EOF)",
                                                 user, chunks)
    client.receive_data(b"".join(chunks))
    assert client.close_rcvd is not None and client.close_rcvd.code == 1011, broken(
        "websockets", "Protocol.fail", user, client.close_rcvd)

    hub, client = _open_pair()
    client.send_text(b"x" * (MAX_SIZE + 1))
    _deliver(client, hub)
    assert [code for code, _ in _closes(_deliver(hub, client))] == [1009], broken(
        "websockets", "Protocol's max_size (a close with 1009)", "hub/ws.py (its frame size limit)",
        client.close_rcvd)

    hub, _client = _open_pair()
    hub.receive_eof()
    assert b"" in list(hub.data_to_send()), broken(
        "websockets", "Protocol.receive_eof (then EOF in data_to_send)", "hub/ws.py (eof_received)", "none")

