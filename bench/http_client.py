"""A lean HTTP/1.1 keep-alive client for the bench's REST calls.

httpx spent ~4.5 ms of the load generator's CPU per publish call (connection pool scans, anyio
and h11 layers, a module lookup per request), so one core of load generator offered ~200
calls/s whatever the hub could do. This client is an asyncio protocol per connection: a request
is one `write` of prepared bytes, the answer is parsed from the buffer by its Content-Length (the
hub always sends one). Enough for the bench's POSTs and GETs, no more: no chunked bodies, no
redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Answer:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Link(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: asyncio.Future[Answer] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiting is None:
            return
        head = bytes(self.buffer[:end]).split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        waiting, self.waiting = self.waiting, None
        if not waiting.done():
            waiting.set_result(Answer(int(head[0].split(b" ", 2)[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(self.lost)


class LeanHttp:
    """Up to `concurrency` keep-alive connections to `base_url`, each carrying one request at a
    time; `headers` go with every request."""

    def __init__(self, base_url: str, concurrency: int, headers: Mapping[str, str],
                 timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {
            "host": f"{self._host}:{self._port}", **headers}.items()).encode()
        self._timeout = timeout
        self._free: asyncio.Queue[_Link | None] = asyncio.Queue()
        for _ in range(concurrency):
            self._free.put_nowait(None)  # a slot, connected on first use
        self._links: list[_Link] = []

    async def __aenter__(self) -> LeanHttp:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for link in self._links:
            if link.transport is not None:
                link.transport.close()

    async def post(self, path: str, content: bytes = b"",
                   headers: Mapping[str, str] | None = None) -> Answer:
        return await self.request("POST", path, content, headers)

    async def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return await self.request("GET", path, b"", headers)

    async def request(self, method: str, path: str, content: bytes,
                      headers: Mapping[str, str] | None) -> Answer:
        link = await self._free.get()
        try:
            if link is None or link.lost is not None:
                _, link = await asyncio.get_running_loop().create_connection(
                    _Link, self._host, self._port)
                self._links.append(link)
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
            waiting: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            link.waiting = waiting
            assert link.transport is not None
            link.transport.write(b"%s %s HTTP/1.1\r\n%s%scontent-length: %d\r\n\r\n%s" % (
                method.encode(), path.encode(), self._fixed, extra, len(content), content))
            async with asyncio.timeout(self._timeout):
                return await waiting
        except BaseException:
            if link is not None and link.transport is not None:
                with contextlib.suppress(Exception):
                    link.transport.close()
            link = None
            raise
        finally:
            self._free.put_nowait(link)
