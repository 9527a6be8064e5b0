"""What the hub relies on inside uvicorn, uvicorn-worker, gunicorn and websockets, beyond their
documented APIs, checked on the installed versions (no hub, no services; well under a second).

pyproject.toml pins these packages to the ranges this file has passed on. When an upgrade
breaks one of these tests, its message names the package, its version, the internal that
changed and the hub's code that relies on it: adapt that code (and this file), then widen the pin.
- uvicorn hands an upgraded connection to the app's own protocol (hub/ws.py `WebSocketApi.protocol`,
  its `ws` option): called as `ws(config=, server_state=, app_state=)`, given the transport, the
  request replayed as bytes, then the transport's later bytes; registered in
  `server_state.connections`, it is asked to `shutdown()` at a graceful stop.
- uvicorn's httptools protocol, which hub/http_protocol.py subclasses (its `http` option): the
  parser's callbacks `on_message_begin`, `on_headers_complete`, `on_message_complete` called in
  that order, `self.loop` and `self.transport`, and `STATUS_LINE` for the 408 and 431 answers;
  for the event stream's `hand_off` (hub/stream_socket.py): the request cycle's
  `chunked_encoding`, `response_complete` and `disconnected`, `self.connections`,
  `self.pipeline` and `_unset_keepalive_if_required`, and a request task that ends quietly once
  its response counts as complete (tests/test_dependency_contract_stream.py).
- uvicorn-worker's `UvicornWorker._serve` builds its server from `self.config` at call time, so
  hub/server.py's `HubWorker._serve` sets `config.ws` there; `callback_notify` is its override hook.
- gunicorn takes every setting hub/server.py's `HubApplication.load_config` sets, the worker as a class.
- websockets' sans-I/O `ServerProtocol` and `Protocol` (hub/ws.py): the handshake, frames handed
  over one by one (fragments not reassembled), pings answered, close and EOF signalled in
  `data_to_send()` (tests/test_dependency_contract_websockets.py).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import logging
import os
import signal
import socket
import tomllib
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http import httptools_impl
from websockets.http11 import Request
from websockets.server import ServerProtocol

from hub.http_protocol import http_protocol
from hub.server import uvicorn_options
from hub.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PINNED = ("uvicorn", "uvicorn-worker", "gunicorn", "websockets")
HTTP_PROTOCOLS: dict[str, Callable[[], object]] = {  # uvicorn's `http` option: the hub's own
    "hub": lambda: http_protocol(Settings()),           # (hub/http_protocol.py), and its base
    "httptools": lambda: "httptools",
}
MAX_SIZE = 4096
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example key
WAIT = 10.0
LOG = logging.getLogger("tests.dependency_contract")


def _pins() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {r.name: r for r in requirements if r.name in PINNED}


def broken(package: str, what: str, user: str, detail: object) -> str:
    """The failure message: which package changed what, and which part of the hub relies on it."""
    return (f"{package} {version(package)} (pinned {_pins()[package].specifier}) changed {what}, "
            f"which {user} relies on: {detail}")


# the pins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("package", PINNED)
def test_installed_versions_are_within_the_pinned_ranges(package: str) -> None:
    requirement = _pins().get(package)
    assert requirement is not None, f"pyproject.toml no longer lists {package} among the dependencies"
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
        f"pyproject.toml pins {package}{requirement.specifier} with no upper bound: the hub relies "
        "on its internals, so an upgrade must pass tests/test_dependency_contract.py first")
    installed = version(package)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{package} {installed} is installed but pyproject.toml pins {requirement.specifier}: run "
        "scripts/bootstrap (uv sync), or, to move to it, make tests/test_dependency_contract.py "
        "pass on it and widen the pin")


# uvicorn: the hand-off of an upgraded connection -------------------------------------------


class Handed(asyncio.Protocol):
    """A stand-in for hub/ws.py's HubSocket, recording what uvicorn gives it."""

    instances: list[Handed] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.transport: asyncio.BaseTransport | None = None
        self.received = b""
        self.data = asyncio.Event()
        self.shut_down = False
        Handed.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.kwargs["server_state"].connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.data.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.kwargs["server_state"].connections.discard(self)

    def shutdown(self) -> None:
        self.shut_down = True
        assert self.transport is not None
        self.transport.close()

    async def until(self, check: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not check():
                self.data.clear()
                await self.data.wait()


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def upgrade_request(path: str = "/ws?probe=1") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Origin: https://app.example\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def _check_hand_off(handed: Handed, config: uvicorn.Config, user: str) -> None:
    pkg = "uvicorn"
    assert handed.args == () and set(handed.kwargs) == {"config", "server_state", "app_state"}, broken(
        pkg, "how it calls the `ws` protocol factory", user,
        f"expected ws(config=, server_state=, app_state=), got args {handed.args} and keywords "
        f"{sorted(handed.kwargs)}")
    assert handed.kwargs["config"] is config, broken(pkg, "the `config` passed to `ws`", user,
                                                     handed.kwargs["config"])
    connections = getattr(handed.kwargs["server_state"], "connections", None)
    assert isinstance(connections, set), broken(pkg, "`server_state.connections` (a set)", user, connections)
    transport = handed.transport
    missing = [name for name in ("write", "get_write_buffer_size", "close", "abort", "is_closing",
                                 "can_write_eof", "write_eof", "is_reading", "pause_reading",
                                 "get_extra_info") if not callable(getattr(transport, name, None))]
    assert transport is not None and not missing, broken(
        pkg, "the transport given to the `ws` protocol's connection_made", user, f"missing {missing}")
    # the request is replayed as bytes the hub's own handshake (websockets' ServerProtocol) accepts
    server = ServerProtocol(max_size=MAX_SIZE, logger=LOG)
    server.receive_data(handed.received)
    requests = [e for e in server.events_received() if isinstance(e, Request)]
    assert requests and requests[0].path == "/ws?probe=1" and requests[0].headers.get(
        "Origin") == "https://app.example", broken(
        pkg, "the request it replays to the `ws` protocol's data_received", user, handed.received[:300])
    assert server.accept(requests[0]).status_code == 101, broken(
        pkg, "the request it replays (not a valid WebSocket handshake any more)", user, handed.received[:300])


@contextlib.asynccontextmanager
async def serving(app: Any = None, **options: Any) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """A uvicorn server of `app` (`_app` by default) on a free port of 127.0.0.1, stopped
    gracefully on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app or _app, host="127.0.0.1", port=port, lifespan="off", log_config=None,
                            timeout_graceful_shutdown=5, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                assert not task.done(), task
                await asyncio.sleep(0.01)
        yield server, port
    finally:
        server.should_exit = True
        async with asyncio.timeout(WAIT):
            await task


@pytest.mark.parametrize("http", HTTP_PROTOCOLS)
async def test_uvicorn_hands_an_upgrade_to_the_ws_protocol_and_shuts_it_down(http: str) -> None:
    user = "hub/ws.py (WebSocketApi.protocol, HubSocket) and hub/server.py (uvicorn's ws option)"
    Handed.instances.clear()
    writer: asyncio.StreamWriter | None = None
    try:
        async with serving(ws=Handed, http=HTTP_PROTOCOLS[http]()) as (server, port):
            async with asyncio.timeout(WAIT):
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(upgrade_request())
                while not Handed.instances or b"\r\n\r\n" not in Handed.instances[0].received:
                    await asyncio.sleep(0.01)
            (handed,) = Handed.instances
            _check_hand_off(handed, server.config, user)
            assert handed in set[object](server.server_state.connections)
            # the transport now feeds the hub's protocol, not uvicorn's HTTP parser
            writer.write(b"\x81\x85after")
            await handed.until(lambda: handed.received.endswith(b"\x81\x85after"))
    finally:
        if writer is not None:
            writer.close()
    assert handed.shut_down, broken("uvicorn", "its graceful shutdown (`shutdown()` of each of "
                                    "server_state.connections)", "hub/ws.py (HubSocket.shutdown: close 1012)",
                                    "shutdown() was not called")


async def test_uvicorn_httptools_protocol_calls_the_hooks_hub_http_protocol_overrides() -> None:
    user = "hub/http_protocol.py (BoundedHeadProtocol: request heads bounded in time and size)"
    calls: list[str] = []
    seen: dict[str, object] = {}

    class Recording(httptools_impl.HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            seen.update(loop=getattr(self, "loop", None), transport=getattr(self, "transport", None))

        def on_message_begin(self) -> None:
            calls.append("begin")
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            calls.append("headers")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            calls.append("complete")
            super().on_message_complete()

    async with serving(http=Recording) as (_server, port):
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = await reader.read()
            writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), broken("uvicorn", "HttpToolsProtocol (serving a request)",
                                                      user, answer[:200])
    assert calls == ["begin", "headers", "complete"], broken(
        "uvicorn", "the parser callbacks of HttpToolsProtocol (on_message_begin, on_headers_complete, "
        "on_message_complete)", user, calls)
    assert isinstance(seen["loop"], asyncio.AbstractEventLoop) and seen["transport"] is not None, broken(
        "uvicorn", "HttpToolsProtocol's `loop` and `transport` attributes", user, seen)
    for status in (408, 431):
        line = httptools_impl.STATUS_LINE.get(status)
        assert isinstance(line, bytes) and line.startswith(b"HTTP/1.1 %d " % status) and line.endswith(
            b"\r\n"), broken("uvicorn", "httptools_impl.STATUS_LINE (status -> status line)", user, line)


def test_uvicorn_takes_every_option_the_hub_passes() -> None:
    options = {**uvicorn_options(Settings()), "ws": Handed, "host": "127.0.0.1", "port": 8000}
    worker_options = {"loop": "auto", "http": "auto", "timeout_notify": 2.0, **options}  # HubWorker's
    for name, target, passed in (("uvicorn.run", uvicorn.run, options),
                                 ("uvicorn.Config", uvicorn.Config, worker_options)):
        try:
            inspect.signature(target).bind(_app, **passed)
        except TypeError as exc:
            pytest.fail(broken("uvicorn", f"the parameters of {name}", "hub/server.py (uvicorn_options, "
                               "HubWorker.CONFIG_KWARGS)", exc))


# uvicorn-worker and gunicorn: the hub's worker class ----------------------------------------


async def test_uvicorn_worker_serves_its_config_as_set_in_serve_and_calls_callback_notify() -> None:
    from gunicorn.config import Config as GunicornConfig
    from gunicorn.glogging import Logger
    from uvicorn_worker import UvicornWorker

    user = "hub/server.py (HubWorker: _serve sets config.ws, callback_notify checks the master)"
    notified: list[tuple[object, object]] = []

    class Worker(UvicornWorker):  # type: ignore[misc]  # as HubWorker does
        CONFIG_KWARGS = {"loop": "auto", "http": "auto", "timeout_notify": 0.0}

        async def _serve(self) -> None:
            self.config.ws = Handed
            await super()._serve()

        async def callback_notify(self) -> None:
            notified.append((self.ppid, self.pid))
            self.notify()

    for name in ("_serve", "callback_notify"):
        method = getattr(UvicornWorker, name, None)
        assert inspect.iscoroutinefunction(method) and list(inspect.signature(method).parameters) == [
            "self"], broken("uvicorn-worker", f"UvicornWorker.{name} (an async method of no argument)",
                            user, method)
    cfg = GunicornConfig()
    cfg.set("max_requests", 1)  # the served request ends the worker's server
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    worker = Worker(0, os.getppid(), [listening], None, 30, cfg, Logger(cfg))
    loop = asyncio.get_running_loop()
    Handed.instances.clear()
    try:
        config = worker.config
        assert isinstance(config, uvicorn.Config) and not config.loaded, broken(
            "uvicorn-worker", "UvicornWorker.config (an unloaded uvicorn.Config built in __init__)", user,
            config)
        assert config.timeout_notify == 0.0 and config.callback_notify == worker.callback_notify, broken(
            "uvicorn-worker", "how CONFIG_KWARGS and callback_notify reach the uvicorn.Config", user,
            (config.timeout_notify, config.callback_notify))
        worker.wsgi = _app
        serving = asyncio.create_task(worker._serve())
        async with asyncio.timeout(WAIT):
            while not Handed.instances:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(upgrade_request())
                await asyncio.sleep(0.05)
                writer.close()
            handed = Handed.instances[0]
            await handed.until(lambda: b"\r\n\r\n" in handed.received)
            _check_hand_off(handed, config, user)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200"), broken(
                "uvicorn-worker", "UvicornWorker._serve (serving self.wsgi)", user, "no answer from the app")
            writer.close()
            await serving
    finally:
        loop.remove_signal_handler(signal.SIGQUIT)
        listening.close()
        worker.tmp.close()
    assert notified and notified[0][0] == os.getppid(), broken(
        "uvicorn-worker", "the calls of callback_notify (every timeout_notify seconds)", user, notified)


def test_gunicorn_takes_every_setting_the_hub_sets_and_a_worker_class() -> None:
    from gunicorn.app.base import BaseApplication
    from uvicorn_worker import UvicornWorker

    user = "hub/server.py (HubApplication.load_config)"
    tree = ast.parse((ROOT / "hub" / "server.py").read_text())
    names = sorted({str(call.args[0].value) for call in ast.walk(tree)
                    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "set" and ast.unparse(call.func.value) == "self.cfg"
                    and call.args and isinstance(call.args[0], ast.Constant)})
    assert "worker_class" in names and "bind" in names, f"HubApplication's cfg.set calls not found: {names}"

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for name in names:
                if name not in self.cfg.settings:
                    pytest.fail(broken("gunicorn", f"its settings (no `{name}` any more)", user,
                                       sorted(self.cfg.settings)))
            self.cfg.set("worker_class", UvicornWorker)

        def load(self) -> Any:
            return _app

    application = Application()
    worker_class = application.cfg.worker_class
    assert worker_class is UvicornWorker, broken(
        "gunicorn", "the worker_class setting (a class, not a dotted name)", user, worker_class)
