"""An asyncio client of the hub's WebSocket API (protocol §4) for backends, tests and benchmarks.

    client = HubClient("wss://hub.example/ws", PasswordLogin("https://hub.example", "ann", pw))
    async with contextlib.aclosing(client.events()) as items:
        async for item in items:
            if isinstance(item, Reset):
                ...  # re-read state over REST; the events after it follow on from item.last_event_id
            else:
                ...  # an Event: every id once, in order, across reconnects

Guarantees: events come in stream order and no id is yielded twice. After a disconnect the client
resumes from the last id and epoch it yielded; the hub replays what was missed, or answers
`recovered: false` when it cannot (history trimmed, epoch changed), which the client yields as a
`Reset` before any later event. The first connection yields a `Reset` too unless it was given a
position to resume from: that is the moment to load state.

Reconnects: any close but a terminal one is followed by a full-jitter exponential back-off
(uniform in [0, min(cap, base * 2**attempt)]; the attempt count restarts once a connection has
stayed up `stable_after` seconds), then a resume. Close codes follow `hub.close_codes`
(`action_for`): a terminal code, HTTP 401/403/404 at the handshake, and 4001 when the token
provider cannot refresh (or a fresh token is refused at once) are raised from `events()` as
`HubClosed`; after 4001 the client refreshes its token before reconnecting. Tokens come from a
`TokenProvider`; when it knows the expiry, the client sends a `refresh` frame before the access
token expires.

`transport="stream"` reads the same stream from `GET /api/v1/stream` (protocol §12, for networks
that break WebSockets; hub/client_stream.py) with the same guarantees and the same behaviour on
each kind of end; the token is refreshed when the stream ends with `token_expired`.

Signals (protocol §11: `presence`, `typing`) are live only: with `signals=True` they are yielded
as `Signal`s between events, in the order they arrived, never replayed after a reconnect (re-read
presence over REST after each `Reset` or reconnect). `typing(chat_id)` tells the other members of
a chat that the user types, at most once per chat every `TYPING_EVERY` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from hub.client_stream import STREAM_PATH, EventStreamSocket
from hub.client_tokens import AccessToken, PasswordLogin, RefreshFailed, StaticToken, TokenProvider
from hub.close_codes import CloseAction, CloseCode, action_for

log = logging.getLogger("hub.client")

TERMINAL_HTTP_STATUSES = frozenset({401, 403, 404})
TRANSPORTS = ("ws", "stream")
SIGNAL_TYPES = frozenset({"presence", "typing"})
TYPING_EVERY = 2.0  # the hub forwards one typing signal per user and chat per 2 s


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the user's stream (protocol §1)."""

    id: int
    name: str
    data: dict[str, Any]
    created_at: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The hub could not replay what this client missed (or no position was given): re-read state.
    Events yielded after it continue from `last_event_id`."""

    epoch: str
    last_event_id: int
    resume_refused: bool  # True when a resume was asked for and refused


@dataclass(frozen=True, slots=True)
class Signal:
    """A live-only frame (protocol §11): `type` ("presence", "typing") and the frame's other
    fields (`chat_id`, `user_id`, `online`)."""

    type: str
    data: dict[str, Any]


class HubClosed(Exception):
    """A terminal close: reconnecting would not help (bad credentials, forbidden, wrong URL)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class HubClient:
    """One user's live stream over one WebSocket at a time, resumed across disconnects.

    `events()` may be iterated once at a time; `close()` (from any task) ends it. The position
    (`last_event_id`, `epoch`) can be saved and passed to a later client to resume from it."""

    def __init__(self, url: str, tokens: TokenProvider | str, *, last_event_id: int | None = None,
                 epoch: str | None = None, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 stable_after: float = 10.0, refresh_margin: float = 60.0,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 max_frame: int = 2**20, transport: str = "ws", signals: bool = False) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport={transport!r}: use one of {', '.join(TRANSPORTS)}")
        self._url = url
        self._stream_url = api_url_of(url) + STREAM_PATH if transport == "stream" else None
        self._tokens: TokenProvider = StaticToken(tokens) if isinstance(tokens, str) else tokens
        self.last_event_id = last_event_id
        self.epoch = epoch
        self.connects = 0
        self._backoff = (backoff_base, backoff_cap)
        self._stable_after = stable_after
        self._refresh_margin = refresh_margin
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self._max_frame = max_frame
        self._closing = asyncio.Event()
        self._socket: ClientConnection | EventStreamSocket | None = None
        self._signals = signals
        self._typing_sent: dict[int, float] = {}  # chat id -> monotonic time of the last frame

    async def close(self) -> None:
        """End `events()` (it returns normally) and close the current socket."""
        self._closing.set()
        if self._socket is not None:
            await self._socket.close()

    async def typing(self, chat_id: int) -> bool:
        """Send a `typing` frame for `chat_id` on the open WebSocket (not over the HTTP stream),
        at most once per chat every TYPING_EVERY seconds; True when one went out."""
        socket, now = self._socket, time.monotonic()
        last = self._typing_sent.get(chat_id, -TYPING_EVERY)
        if not isinstance(socket, ClientConnection) or now - last < TYPING_EVERY:
            return False
        self._typing_sent[chat_id] = now
        try:
            await socket.send(orjson.dumps({"type": "typing", "chat_id": chat_id}).decode())
        except ConnectionClosed:
            return False
        return True

    async def events(self) -> AsyncGenerator[Event | Reset | Signal, None]:
        """Events (and Resets) until `close()`; raises HubClosed on a terminal close."""
        attempt, refresh_first = 0, False
        while not self._closing.is_set():
            try:
                token = await (self._tokens.refresh() if refresh_first else self._tokens.current())
            except RefreshFailed as exc:
                raise HubClosed(CloseCode.AUTH_FAILED, str(exc)) from exc
            except Exception as exc:  # the login service may be restarting too
                log.warning("could not get an access token: %r", exc)
                attempt = await self._pause(attempt)
                continue
            fresh_token, refresh_first = refresh_first, False
            welcomed, started, code = False, time.monotonic(), int(CloseCode.ABNORMAL)
            try:
                async with self._connect() as socket:
                    self._socket = socket
                    if self._closing.is_set():
                        return
                    reset = await self._authenticate(socket, token)
                    welcomed, started = True, time.monotonic()
                    self.connects += 1
                    if reset is not None:
                        yield reset
                    keeper = asyncio.create_task(self._keep_fresh(socket, token.expires_at))
                    try:
                        async for raw in socket:
                            event = self._event(raw)
                            if event is not None:
                                yield event
                    finally:
                        keeper.cancel()
                        await asyncio.gather(keeper, return_exceptions=True)
                    code = socket.close_code or CloseCode.ABNORMAL
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else CloseCode.ABNORMAL
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in TERMINAL_HTTP_STATUSES:
                    raise HubClosed(status, f"handshake refused with HTTP {status}") from exc
                log.warning("handshake refused with HTTP %d; retrying", status)
            except InvalidURI:
                raise
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.warning("cannot reach %s: %r", self._url, exc)
            finally:
                self._socket = None
            if self._closing.is_set():
                return
            action = action_for(code)
            refused_fresh = action is CloseAction.REFRESH and fresh_token and not welcomed
            if action is CloseAction.TERMINAL or refused_fresh:
                raise HubClosed(code, "the hub refused this client; reconnecting would not help")
            refresh_first = action is CloseAction.REFRESH
            if welcomed and time.monotonic() - started >= self._stable_after:
                attempt = 0
            log.info("connection closed (%d); reconnecting", code)
            attempt = await self._pause(attempt)

    def _connect(self) -> Any:
        """The WebSocket, or the event stream that stands for one (`transport="stream"`)."""
        if self._stream_url is not None:
            return EventStreamSocket(self._stream_url, self._open_timeout)
        return connect(self._url, open_timeout=self._open_timeout, ping_interval=self._ping_interval,
                       ping_timeout=self._ping_interval, close_timeout=5, max_size=self._max_frame)

    async def _authenticate(self, socket: ClientConnection | EventStreamSocket,
                            token: AccessToken) -> Reset | None:
        frame: dict[str, Any] = {"type": "auth", "token": token.token}
        resuming = self.last_event_id is not None and self.epoch is not None
        if resuming:
            frame.update(last_event_id=self.last_event_id, epoch=self.epoch)
        await socket.send(orjson.dumps(frame).decode())
        async with asyncio.timeout(self._open_timeout):
            raw = await socket.recv()
        try:
            welcome = orjson.loads(raw)
            epoch, last_id = str(welcome["epoch"]), int(welcome["last_event_id"])
            recovered = welcome["recovered"] is True and welcome["type"] == "welcome"
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidHandshake(f"expected a welcome frame, got {raw[:200]!r}") from exc
        self.epoch = epoch
        if resuming and recovered:
            return None
        self.last_event_id = last_id
        return Reset(epoch, last_id, resume_refused=resuming)

    def _event(self, raw: str | bytes) -> Event | Signal | None:
        try:
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "event":
                event = Event(int(frame["id"]), str(frame["name"]), frame["data"],
                              str(frame["created_at"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring a malformed frame from the hub: %r", raw[:200])
            return None
        if kind == "event":
            if self.last_event_id is not None and event.id <= self.last_event_id:
                log.warning("dropping event %d: already had %d", event.id, self.last_event_id)
                return None
            self.last_event_id = event.id
            return event
        if kind in SIGNAL_TYPES:
            if not self._signals:
                return None
            return Signal(str(kind), {key: value for key, value in frame.items() if key != "type"})
        if kind == "error":
            log.warning("the hub answered an error: %s", frame)
        return None  # pong, refreshed

    async def _keep_fresh(self, socket: ClientConnection | EventStreamSocket,
                          expires_at: float | None) -> None:
        """Send a `refresh` frame ahead of each expiry while the provider can refresh (the event
        stream has no such frame: it ends at expiry, and the client refreshes then)."""
        while expires_at is not None and not isinstance(socket, EventStreamSocket):
            remaining = expires_at - time.time()
            await asyncio.sleep(max(0.0, remaining - min(self._refresh_margin, remaining / 5)))
            try:
                token = await self._tokens.refresh()
            except RefreshFailed as exc:
                log.warning("token refresh refused (%s); the hub will close at expiry", exc)
                return
            except Exception as exc:
                log.warning("token refresh failed (%r); retrying", exc)
                await asyncio.sleep(min(5.0, max(0.1, (expires_at - time.time()) / 4)))
                continue
            await socket.send(orjson.dumps({"type": "refresh", "token": token.token}).decode())
            expires_at = token.expires_at

    async def _pause(self, attempt: int) -> int:
        base, cap = self._backoff
        delay = random.uniform(0, min(cap, base * 2 ** min(attempt, 30)))  # noqa: S311
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
        return attempt + 1


def api_url_of(ws_url: str) -> str:
    """The REST base URL of a hub whose WebSocket URL is `ws_url` (ws→http, wss→https, no /ws)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path[:-3] if parts.path.endswith("/ws") else parts.path
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def listen_command(args: argparse.Namespace) -> int:
    """`hub listen`: print a user's live events as JSON lines until interrupted."""
    try:
        return asyncio.run(_listen(args))
    except KeyboardInterrupt:
        return 0


async def _listen(args: argparse.Namespace) -> int:
    provider: TokenProvider
    login: PasswordLogin | None = None
    if args.token:
        provider = StaticToken(args.token)
    elif args.username and args.password:
        provider = login = PasswordLogin(args.api_url or api_url_of(args.url), args.username,
                                         args.password)
    else:
        print("hub listen: give --token, or --username and --password "
              "(or HUB_TOKEN / HUB_PASSWORD in the environment)", file=sys.stderr)
        return 2
    client = HubClient(args.url, provider, last_event_id=args.last_event_id, epoch=args.epoch,
                       transport=args.transport)
    try:
        async for item in client.events():
            if isinstance(item, Reset):
                print(f"hub listen: stream {item.epoch} at {item.last_event_id} "
                      f"({'resume refused: re-read state' if item.resume_refused else 'live'})",
                      file=sys.stderr, flush=True)
                continue
            if isinstance(item, Signal):  # not asked for (signals=False): never yielded
                continue
            line = orjson.dumps({"id": item.id, "name": item.name, "data": item.data,
                                 "created_at": item.created_at})
            sys.stdout.write(line.decode() + "\n")
            sys.stdout.flush()
    except HubClosed as exc:
        print(f"hub listen: closed by the hub ({exc})", file=sys.stderr)
        return 1
    finally:
        if login is not None:
            await login.aclose()
    return 0
