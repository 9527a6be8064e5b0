"""The event stream over HTTP (protocol §12) for `hub.client.HubClient(transport="stream")`, for
networks that break WebSockets.

`EventStreamSocket` offers the few socket calls the client makes, so the client's one loop
(resume, back-off, refresh, terminal closes) serves both transports: the `auth` frame opens
`GET /api/v1/stream` with the token as a bearer header and the resume position as
`?last_event_id=&epoch=`; `recv` hands out the welcome, each event and each signal (an SSE
message without an id) as the `/ws` frame it stands for; the stream's final `error` event, or
an HTTP refusal, raises the `ConnectionClosed` of the matching close code, so the client does
what it does on `/ws`. A `refresh` frame is not
sent anywhere: the stream ends with `token_expired` at expiry, and the client refreshes and
resumes losing nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import httpx
import orjson
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from hub.close_codes import CloseCode

STREAM_PATH = "/api/v1/stream"
# the stream's end (its error event's code, or the HTTP status refusing it) as a /ws close code
END_CODES = {"token_expired": CloseCode.AUTH_FAILED, "session_revoked": CloseCode.AUTH_FAILED,
             "slow_consumer": CloseCode.SLOW_CONSUMER, "history_gone": CloseCode.HISTORY_GONE,
             "server_restarting": CloseCode.RESTARTING, "internal": CloseCode.INTERNAL}
STATUS_CODES = {401: CloseCode.AUTH_FAILED, 429: CloseCode.RATE_LIMITED}
ABNORMAL = CloseCode.ABNORMAL


class EventStreamSocket:
    """One `GET /api/v1/stream`, spoken to as the client speaks to a WebSocket."""

    def __init__(self, url: str, open_timeout: float, verify: Any = True) -> None:
        self._url = url
        self._open_timeout = open_timeout
        self._http = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(open_timeout, read=None))
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None
        self.close_code: int | None = None

    async def __aenter__(self) -> EventStreamSocket:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()
        await self._http.aclose()

    async def send(self, text: str) -> None:
        """The `auth` frame opens the stream; other frames have no HTTP counterpart."""
        frame = orjson.loads(text)
        if frame.get("type") != "auth":
            return
        params: dict[str, str] = {}
        if frame.get("last_event_id") is not None and frame.get("epoch") is not None:
            params = {"last_event_id": str(frame["last_event_id"]), "epoch": str(frame["epoch"])}
        request = self._http.build_request(
            "GET", self._url, params=params,
            headers={"Authorization": f"Bearer {frame['token']}", "Accept": "text/event-stream"})
        try:
            async with asyncio.timeout(self._open_timeout):
                response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:  # what the client's loop knows from sockets
            raise OSError(f"cannot open the event stream: {exc!r}") from exc
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            code = STATUS_CODES.get(response.status_code)
            if code is not None:
                raise self._closed(code, body.decode(errors="replace")[:120])
            raise InvalidStatus(Response(response.status_code, response.reason_phrase,
                                         Headers(response.headers.items()), body))
        self._response = response
        self._lines = response.aiter_lines()

    async def recv(self) -> str:
        """The next message as the `/ws` frame it stands for; ConnectionClosed at the end."""
        lines = self._lines
        if lines is None:
            raise self._closed(ABNORMAL, "the stream is not open")
        fields: dict[str, str] = {}
        try:
            async for line in lines:
                if line:
                    if not line.startswith(":"):  # ": ping" keeps proxies from cutting it
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                    continue
                if "data" not in fields:
                    continue
                event, data, numbered = fields.get("event", "message"), fields["data"], "id" in fields
                fields = {}
                if event == "welcome":
                    return data
                if event == "error":
                    end = orjson.loads(data)
                    raise self._closed(END_CODES.get(end.get("code"), ABNORMAL), str(end.get("detail")))
                if not numbered:  # a signal (presence, typing): its data is the /ws frame
                    return data
                return '{"type":"event",' + data[1:]
        except httpx.HTTPError:
            pass
        raise self._closed(ABNORMAL, "")

    def __aiter__(self) -> EventStreamSocket:
        return self

    async def __anext__(self) -> str:
        return await self.recv()

    def _closed(self, code: int, reason: str) -> ConnectionClosed:
        """The exception that ends the stream as a socket closed with `code`."""
        self.close_code = code
        return ConnectionClosed(Close(code, reason) if code != ABNORMAL else None, None)

