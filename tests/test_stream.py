"""The event stream over HTTP (protocol §12) against a real hub, on both backends: the same events
in the same order as /ws, exact resume, `recovered`, tickets, refusals, and every way it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from hub.settings import Settings
from hub.stream_socket import StreamSocket
from tests.conftest import RunningHub, free_port, register, serve_hub
from tests.sseutil import STREAM, TICKETS, Message, open_stream, ticket
from tests.test_ops import _samples
from tests.test_processes import HUB, _env
from tests.test_ws_socket import _instances
from tests.wsutil import connect, make_users, mint, publish_to


@pytest.fixture(scope="module")
def hub(module_hub: RunningHub) -> RunningHub:
    return module_hub


def _ids(messages: list[Message]) -> list[int]:
    return [message.data["id"] for message in messages]


async def test_a_stream_and_a_socket_of_one_user_get_the_same_events_in_order(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    async with open_stream(hub.http, token) as stream:
        assert stream.welcome == sock.welcome == {
            "type": "welcome", "user_id": user_id, "epoch": sock.welcome["epoch"],
            "last_event_id": 0, "recovered": False}
        for n in range(30):
            await publish_to(hub, [user_id], "chat.message" if n % 2 else "test.event",
                             {"n": n, "text": "two\nlines"})
        messages = await stream.events(30)
        frames = await sock.events(30)
        assert [{k: v for k, v in f.items() if k != "type"} for f in frames] == [m.data for m in messages]
        assert _ids(messages) == list(range(1, 31))
        assert [m.event for m in messages] == [m.data["name"] for m in messages]
        assert [m.id for m in messages] == [f"{sock.welcome['epoch']}:{n}" for n in range(1, 31)]
        await stream.silent(0.2)
    await sock.close()


async def test_delivery_metrics_are_labelled_by_transport(hub: RunningHub) -> None:
    async def counts() -> dict[str, tuple[float, float]]:
        samples = _samples((await hub.http.get("/metrics")).text)
        return {t: (samples[("hub_events_delivered_total", (("transport", t),))],
                    samples[("hub_delivery_latency_seconds_count", (("transport", t),))])
                for t in ("ws", "stream")}

    ((user_id, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    async with open_stream(hub.http, token) as stream, open_stream(hub.http, token) as second:
        before = await counts()
        for n in range(3):
            await publish_to(hub, [user_id], "test.event", {"n": n})
        await stream.events(3)
        await second.events(3)
        await sock.events(3)
        after = await counts()
    await sock.close()
    assert after["ws"][0] - before["ws"][0] == 3
    assert after["stream"][0] - before["stream"][0] == 6
    assert all(after[t][0] - before[t][0] == after[t][1] - before[t][1] for t in after)


async def test_the_stream_resumes_exactly_after_last_event_id(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    async with open_stream(hub.http, token) as stream:
        await publish_to(hub, [user_id], "first")
        (first,) = await stream.events(1)
    for n in range(20):
        await publish_to(hub, [user_id], "missed", {"n": n})
    async with open_stream(hub.http, token, headers={"Last-Event-ID": str(first.id)}) as resumed:
        assert resumed.welcome["recovered"] is True and resumed.welcome["last_event_id"] == 21
        replay = await resumed.events(20)
        assert _ids(replay) == list(range(2, 22))
        await publish_to(hub, [user_id], "live")
        (live,) = await resumed.events(1)
        assert live.data["id"] == 22 and live.event == "live"
    epoch = stream.welcome["epoch"]
    async with open_stream(hub.http, token, params={"last_event_id": "20", "epoch": epoch}) as again:
        assert again.welcome["recovered"] is True
        assert _ids(await again.events(2)) == [21, 22]


async def test_an_unknown_position_gives_recovered_false_and_no_replay(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    for _ in range(3):
        await publish_to(hub, [user_id], "old")
    async with open_stream(hub.http, token) as stream:
        epoch = stream.welcome["epoch"]
        assert stream.welcome_id == f"{epoch}:3"
    for head, last_event_id in enumerate(("other-epoch:1", f"{epoch}:99", "garbage"), start=3):
        async with open_stream(hub.http, token, headers={"Last-Event-ID": last_event_id}) as stream:
            assert stream.welcome["recovered"] is False and stream.welcome["last_event_id"] == head
            # an EventSource reconnecting from here resumes from the head, not the refused id
            assert stream.welcome_id == f"{epoch}:{head}"
            await publish_to(hub, [user_id], "after")
            (message,) = await stream.events(1)
            assert message.data["id"] == head + 1
            await stream.silent(0.2)


async def test_a_ticket_works_once_for_its_own_user(hub: RunningHub) -> None:
    (alice, alice_token), (bob, _bob_token) = await make_users(hub.settings, 2)
    value = await ticket(hub.http, alice_token)
    async with open_stream(hub.http, params={"ticket": value}) as stream:
        assert stream.welcome["user_id"] == alice
        await publish_to(hub, [bob], "for.bob")
        await publish_to(hub, [alice], "for.alice")
        (message,) = await stream.events(1)
        assert message.event == "for.alice"
    again = await hub.http.get(STREAM, params={"ticket": value})
    assert again.status_code == 401 and again.json()["error"] == "unauthorized"
    assert (await hub.http.get(STREAM, params={"ticket": "x" * 43})).status_code == 401


async def test_tickets_need_a_user_token(hub: RunningHub) -> None:
    assert (await hub.http.post(TICKETS)).status_code == 401
    bad = await hub.http.post(TICKETS, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"


async def test_an_access_token_in_the_url_or_none_at_all_is_401(hub: RunningHub) -> None:
    ((_user_id, token),) = await make_users(hub.settings, 1)
    for params in ({"token": token}, {"access_token": token}, {}):
        response = await hub.http.get(STREAM, params=params)
        assert response.status_code == 401, params
        assert response.json()["error"] == "unauthorized"
    # even next to a valid header: a token in a URL is refused, never used
    refused = await hub.http.get(STREAM, params={"token": token},
                                 headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    bad = await hub.http.get(STREAM, params={"last_event_id": "-1"},
                             headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 422 and "last_event_id" in bad.json()["detail"]


async def test_a_logged_out_session_ends_its_stream(hub: RunningHub) -> None:
    account = await register(hub.http)
    async with open_stream(hub.http, account.access_token) as stream:
        assert (await hub.http.post("/api/v1/auth/logout", headers=account.headers)).status_code == 204
        ended = await stream.ended(timeout=10)
    assert ended.data["code"] == "session_revoked"


async def test_the_user_connection_limit_is_shared_with_websockets(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_max_connections_per_user=2)) as hub:
        ((_user_id, token),) = await make_users(hub.settings, 1)
        sock = await connect(hub.ws_url, token)
        async with open_stream(hub.http, token):
            refused = await hub.http.get(STREAM, headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
            assert int(refused.headers["Retry-After"]) >= 1
            metrics = (await hub.http.get("/metrics")).text
            assert 'hub_connections{transport="stream"} 1.0' in metrics
            assert 'hub_connections{transport="ws"} 1.0' in metrics
            assert "hub_stream_connections 1.0" in metrics  # the name before the label, kept
        await sock.close()


async def test_pings_keep_the_stream_and_it_ends_with_token_expired(settings: Settings) -> None:
    async with serve_hub(replace(settings, ws_ping_interval=0.3)) as hub:
        ((user_id, _),) = await make_users(hub.settings, 1)
        token = mint(hub.settings, user_id, ttl=3)
        async with open_stream(hub.http, token) as stream:
            ended = await stream.ended(timeout=10)
            assert ended.data["code"] == "token_expired" and ended.data["detail"]
            assert stream.pings >= 3
        metrics = (await hub.http.get("/metrics")).text
        assert 'hub_stream_ends_total{code="token_expired"} 1.0' in metrics


async def test_an_idle_stream_keeps_no_timer_of_its_own(hub: RunningHub) -> None:
    """Like a /ws socket's, an idle stream's keepalive is a bucket of its process's one wheel,
    and a token lasting beyond two keepalive turns arms no expiry timer (the turns watch it)."""
    users = await make_users(hub.settings, 3)
    async with contextlib.AsyncExitStack() as streams:
        for _, token in users:
            await streams.enter_async_context(open_stream(hub.http, token))
        mine = {user_id for user_id, _ in users}
        idle = [s for s in _instances(StreamSocket)
                if s._connection is not None and s._connection.user_id in mine]
        assert len(idle) == 3
        for stream in idle:
            assert isinstance(stream._timer, int)
            assert stream._connection is not None and stream._connection._expiry is None


async def test_a_ticket_is_refused_after_its_ttl(settings: Settings) -> None:
    async with serve_hub(replace(settings, stream_ticket_ttl=1)) as hub:
        ((_user_id, token),) = await make_users(hub.settings, 1)
        value = await ticket(hub.http, token)
        await asyncio.sleep(1.5)
        assert (await hub.http.get(STREAM, params={"ticket": value})).status_code == 401


async def test_a_stream_that_is_never_read_is_cut_as_a_slow_consumer(settings: Settings) -> None:
    tight = replace(settings, ws_queue_max_messages=20, ws_queue_max_bytes=256 * 1024,
                    ws_ping_interval=120)
    async with serve_hub(tight) as hub:
        ((user_id, token),) = await make_users(hub.settings, 1)
        port = int(hub.base_url.rsplit(":", 1)[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, (f"GET {STREAM} HTTP/1.1\r\nHost: hub\r\n"
                                           f"Authorization: Bearer {token}\r\n\r\n").encode())
            while "hub_stream_connections 1.0" not in (await hub.http.get("/metrics")).text:
                await asyncio.sleep(0.05)
        blob = secrets.token_hex(30_000)  # 60 kB events: far more than the socket buffers hold
        try:
            async with asyncio.timeout(60):
                for _ in range(30):
                    await asyncio.gather(*(publish_to(hub, [user_id], "big", {"blob": blob})
                                           for _ in range(5)))
                    metrics = (await hub.http.get("/metrics")).text
                    if "hub_stream_connections 0.0" in metrics:
                        break
            assert 'hub_slow_consumer_disconnects_total{transport="stream"} 1.0' in metrics
            assert 'hub_stream_ends_total{code="slow_consumer"} 1.0' in metrics
            # the peer still never reads: the hub drops the connection within its close timeout
            async with asyncio.timeout(30):
                received = b""
                while chunk := await loop.sock_recv(sock, 65536):
                    received += chunk
            assert b"event: error" in received and b"slow_consumer" in received
        finally:
            sock.close()


async def test_errors_before_the_stream_have_the_contract_shape(hub: RunningHub) -> None:
    async with httpx.AsyncClient(base_url=hub.base_url) as http:
        response = await http.get(STREAM, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert set(response.json()) >= {"error", "detail"}


@pytest.mark.parametrize("backend", ["postgres"])
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigterm_ends_the_stream_with_server_restarting_and_logs_no_ticket(
        settings: Settings, workers: str, tmp_path: Path) -> None:
    ((_user_id, token),) = await make_users(settings, 1)
    log_path = tmp_path / "hub.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen([HUB, "serve", "--port", str(port), "--workers", workers],
                                   env={**_env(settings), "LOG_LEVEL": "INFO"}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get("/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            value = await ticket(http, token)
            async with open_stream(http, params={"ticket": value}) as stream:
                process.send_signal(signal.SIGTERM)
                ended = await stream.ended(timeout=30)
            assert ended.data["code"] == "server_restarting"
        async with asyncio.timeout(30):
            while process.poll() is None:
                await asyncio.sleep(0.1)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    log_text = log_path.read_text(errors="replace")
    assert value not in log_text and "ticket=" not in log_text
    if workers == "1":  # uvicorn's access log, which gunicorn's workers do not write here
        assert "GET /api/v1/stream?… HTTP/1.1" in log_text


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_on_another_server_the_stream_is_an_asgi_response_with_the_same_messages(
        settings: Settings) -> None:
    """Without the hub's own HTTP protocol (no hand-off) the stream is hub/stream_outlet.py's
    response, as is a HEAD on any server."""
    async with serve_hub(settings, http="httptools") as hub:
        account = await register(hub.http)
        head = await hub.http.head(STREAM, headers=account.headers)
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
        async with open_stream(hub.http, account.access_token) as stream:
            await publish_to(hub, [account.id], "test.event", {"n": 1})
            (message,) = await stream.events(1)
            assert message.data["name"] == "test.event"
            assert message.id == f"{stream.welcome['epoch']}:{message.data['id']}"
            assert (await hub.http.post("/api/v1/auth/logout", headers=account.headers)).status_code == 204
            assert (await stream.ended()).data["code"] == "session_revoked"
        async with asyncio.timeout(5):  # and it left the registry
            while 'hub_connections{transport="stream"} 0.0' not in (await hub.http.get("/metrics")).text:
                await asyncio.sleep(0.05)


async def test_a_client_that_leaves_is_unregistered_at_once(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    async with open_stream(hub.http, token):
        pass
    async with asyncio.timeout(5):
        while True:  # the peer's close reaches the stream through the HTTP protocol
            if "hub_stream_connections 0.0" in (await hub.http.get("/metrics")).text:
                break
            await asyncio.sleep(0.05)
    async with open_stream(hub.http, token) as stream:  # and its user's channel still works
        await publish_to(hub, [user_id], "after")
        assert (await stream.events(1))[0].event == "after"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_ticket_works_once_on_any_process_of_the_deployment(settings: Settings) -> None:
    ((user_id, token),) = await make_users(settings, 1)
    async with serve_hub(settings) as issuing, serve_hub(settings) as serving:
        value = await ticket(issuing.http, token)
        async with open_stream(serving.http, params={"ticket": value}) as stream:
            assert stream.welcome["user_id"] == user_id
        assert (await issuing.http.get(STREAM, params={"ticket": value})).status_code == 401
