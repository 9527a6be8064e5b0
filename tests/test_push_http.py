"""The push sender's HTTP/1.1 client (hub/push_http.py) against real TLS servers on 127.0.0.1
that answer as a test scripts them: keep-alive reuse, a connection the server closed, answers
of every framing, a certificate the client does not trust, a silent server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hub.push_http import PushClient, PushHttpError, post_request
from tests.certs import self_signed

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


Answer = Callable[[bytes, asyncio.StreamWriter], bytes | None]  # None: close without answering


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, answer: Answer) -> AsyncIterator[tuple[Server, Path]]:
    """A TLS server for `localhost` on 127.0.0.1 reading one request at a time (head and a
    Content-Length body) and writing what `answer` returns."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = Server(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                request = head + await reader.readexactly(length)
                server.requests.append(request)
                reply = answer(request, writer)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply:
                    break
        writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server, cert


def client(ca: Path | None, timeout: float = 5.0) -> PushClient:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    return PushClient(context, timeout=timeout)


def request(port: int, body: bytes = b"x" * 100, target: str = "/push/a") -> bytes:
    return post_request(f"localhost:{port}", target, [("TTL", "60"), ("Topic", "chat-1")], body)


async def test_requests_share_a_kept_alive_connection(tmp_path: Path) -> None:
    async with serve(tmp_path, lambda _r, _w: CREATED) as (server, ca):
        push = client(ca)
        try:
            for _ in range(3):
                answer = await push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
                assert answer.status == 201
            answers = await asyncio.gather(*(
                push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
                for _ in range(4)))
        finally:
            await push.close()
    assert [a.status for a in answers] == [201] * 4
    assert server.connections == 4  # one for the first three, then one per concurrent request
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[:2] == [b"POST /push/a HTTP/1.1", f"Host: localhost:{server.port}".encode()]
    assert b"TTL: 60" in head and b"Topic: chat-1" in head and body == b"x" * 100


async def test_a_connection_the_server_closed_is_not_reused(tmp_path: Path) -> None:
    closing = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with serve(tmp_path, lambda _r, _w: closing) as (server, ca):
        push = client(ca)
        try:
            for _ in range(2):
                answer = await push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
                assert answer.status == 201
        finally:
            await push.close()
    assert server.connections == 2


async def test_answers_of_every_framing(tmp_path: Path) -> None:
    answers = iter([
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 410 Gone\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nbye\r\n0\r\n\r\n",
        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nno length, ends with the connection",
    ])
    async with serve(tmp_path, lambda _r, _w: next(answers)) as (server, ca):
        push = client(ca)
        try:
            got = [await push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
                   for _ in range(3)]
        finally:
            await push.close()
    assert [(a.status, a.retry_after, a.body) for a in got] == [
        (429, "7", b"slow"), (410, None, b"bye"), (400, None, b"no length, ends with the connection")]


async def test_untrusted_certificate_refused(tmp_path: Path) -> None:
    async with serve(tmp_path, lambda _r, _w: CREATED) as (server, _ca):
        push = client(None)  # the system CAs: the test certificate is not among them
        try:
            with pytest.raises(PushHttpError, match="CERTIFICATE_VERIFY_FAILED"):
                await push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
        finally:
            await push.close()
    assert server.requests == []


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 2", b"SMTP ready\r\n\r\n"])
async def test_no_whole_answer_is_an_error(tmp_path: Path, reply: bytes | None) -> None:
    def answer(_request: bytes, writer: asyncio.StreamWriter) -> bytes | None:
        if reply is not None:
            writer.write(reply)
        return None  # then close

    async with serve(tmp_path, answer) as (server, ca):
        push = client(ca)
        try:
            with pytest.raises(PushHttpError):
                await push.post("localhost", server.port, ["127.0.0.1"], request(server.port))
        finally:
            await push.close()


async def test_silent_server_times_out(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=context)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        push = client(cert, timeout=0.5)
        try:
            with pytest.raises(PushHttpError, match="TimeoutError"):
                await push.post("localhost", port, ["127.0.0.1"], request(port))
        finally:
            release.set()
            await push.close()


async def test_first_address_that_connects_is_used(tmp_path: Path) -> None:
    async with serve(tmp_path, lambda _r, _w: CREATED) as (server, ca):
        push = client(ca)
        try:
            answer = await push.post("localhost", server.port, ["127.0.0.2", "127.0.0.1"],
                                     request(server.port))
        finally:
            await push.close()
    assert answer.status == 201 and server.connections == 1


def test_a_target_or_header_that_would_split_the_request_is_refused() -> None:
    for target, value in (("/push/a b", "1"), ("/push/a\r\nX: y", "1"), ("/push/a", "1\r\nX: y")):
        with pytest.raises(ValueError, match="space or control"):
            post_request("localhost", target, [("TTL", value)], b"")
