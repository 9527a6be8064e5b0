"""What the event stream's hand-off (hub/http_protocol.py `BoundedHeadProtocol.hand_off`,
hub/stream_socket.py) relies on inside uvicorn, beside tests/test_dependency_contract.py (whose
docstring lists it): after its head, a response gives its connection to a protocol of its own;
the request's task then ends without an error, and the graceful stop asks the new protocol."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from hub.http_protocol import CONTROL, http_protocol
from hub.settings import Settings
from tests.test_dependency_contract import WAIT, broken, serving


class Taker(asyncio.Protocol):
    """A stand-in for hub/stream_socket.py's StreamSocket."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connections: set[Any] = set()
        self.shut_down = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)

    def shutdown(self) -> None:
        assert self.transport is not None
        self.transport.write(b"3\r\nbye\r\n0\r\n\r\n")
        self.transport.close()
        self.shut_down.set()


async def test_a_response_can_take_its_connection_over_after_its_head(
        caplog: pytest.LogCaptureFixture) -> None:
    user = "hub/http_protocol.py (BoundedHeadProtocol.hand_off) and hub/stream_socket.py"
    taker = Taker()
    handed: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        control = scope[CONTROL]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"connection", b"close")]})
        handed.append(control.response_chunked())
        handed.append(control.hand_off(taker))
        if handed[-1]:
            taker.connections = control.connections
            control.connections.add(taker)
            assert taker.transport is not None
            taker.transport.write(b"5\r\nhello\r\n")

    caplog.set_level(logging.ERROR, "uvicorn.error")
    reader: asyncio.StreamReader | None = None
    async with serving(app, http=http_protocol(Settings())) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert await reader.readexactly(10) == b"5\r\nhello\r\n", broken(
                "uvicorn", "the transport a response hands over", user, head)
        assert handed == [True, True], broken("uvicorn", "the request cycle's state", user, handed)
        assert b"transfer-encoding: chunked" in head.lower(), broken(
            "uvicorn", "the chunked encoding of a response without a length", user, head)
        await asyncio.sleep(0.1)  # the request's task has ended by now
        server.should_exit = True  # the graceful stop asks the taker, not the HTTP protocol
        async with asyncio.timeout(WAIT):
            await taker.shut_down.wait()
            assert await reader.read() == b"3\r\nbye\r\n0\r\n\r\n"
        writer.close()
    errors = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert not errors, broken("uvicorn", "how a request task that returns is judged", user, errors)
