"""A thin test-side reader of the event stream over HTTP (protocol §12), every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

STREAM = "/api/v1/stream"
TICKETS = "/api/v1/stream/tickets"
WAIT = 10.0


@dataclass(frozen=True)
class Message:
    event: str
    data: Any
    id: str | None


class StreamReader:
    """Reads SSE messages; comments (`: ping`) are counted in `pings`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.pings = 0
        self.welcome: dict[str, Any] = {}
        self.welcome_id: str | None = None
        # a task reads the lines, so that a timed-out wait does not end the response's iterator
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reading = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for line in self.response.aiter_lines():
                self._lines.put_nowait(line)
        except httpx.HTTPError:
            pass
        finally:
            self._lines.put_nowait(None)

    async def close(self) -> None:
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading
        await self.response.aclose()

    async def next(self, timeout: float = WAIT) -> Message:
        fields: dict[str, str] = {}
        async with asyncio.timeout(timeout):
            while (line := await self._lines.get()) is not None:
                if line == "":
                    if fields:
                        return Message(fields.get("event", "message"),
                                       json.loads(fields["data"]), fields.get("id"))
                    continue
                if line.startswith(":"):
                    self.pings += 1
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        self._lines.put_nowait(None)  # for the next call too
        raise EOFError("the stream ended")

    async def events(self, count: int, timeout: float = WAIT) -> list[Message]:
        found: list[Message] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                message = await self.next(timeout)
                assert message.event != "error", message
                found.append(message)
        return found

    async def ended(self, timeout: float = WAIT) -> Message:
        """Read up to the final `error` event and the end of the response."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next(timeout)
                if message.event == "error":
                    with contextlib.suppress(EOFError):
                        extra = await self.next(timeout)
                        raise AssertionError(f"a message after the error event: {extra}")
                    return message

    async def silent(self, seconds: float = 0.3) -> None:
        try:
            message = await self.next(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message!r}")


@contextlib.asynccontextmanager
async def open_stream(http: httpx.AsyncClient, token: str | None = None, *,
                      params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> AsyncIterator[StreamReader]:
    """GET the stream (with a bearer `token` when given), check the welcome, yield the reader."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with asyncio.timeout(WAIT):
        request = http.build_request("GET", STREAM, params=params, headers=sent,
                                     timeout=httpx.Timeout(WAIT, read=None))
        response = await http.send(request, stream=True)
    if response.status_code != 200:
        body = await response.aread()
        await response.aclose()
        raise AssertionError(f"{response.status_code}: {body.decode()}")
    assert response.headers["content-type"].startswith("text/event-stream")
    reader = StreamReader(response)
    try:
        welcome = await reader.next()
        assert welcome.event == "welcome", welcome
        reader.welcome = welcome.data
        reader.welcome_id = welcome.id
        yield reader
    finally:
        await reader.close()


async def ticket(http: httpx.AsyncClient, token: str) -> str:
    response = await http.post(TICKETS, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    assert response.json()["expires_in"] > 0
    value: str = response.json()["ticket"]
    return value
