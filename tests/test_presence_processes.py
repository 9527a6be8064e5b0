"""Presence across `hub serve` processes on one Redis (protocol §11): one user's connections on
several processes are one presence, and a SIGKILLed process's users go offline all the same."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from hub.settings import Settings
from tests.test_presence import bearer, make_chat
from tests.test_processes import hub_process
from tests.wsutil import connect, make_users

# short heartbeats so that a dead process is swept out in seconds, not the default 20 s
FAST = {"PRESENCE_HEARTBEAT": "0.5", "PRESENCE_TTL": "2"}


@pytest.fixture
def backend() -> str:
    return "postgres"


def ws(base: str) -> str:
    return base.replace("http", "ws") + "/ws"


async def test_presence_and_typing_across_processes(settings: Settings) -> None:
    (a, a_token), (b, b_token) = await make_users(settings, 2)
    async with hub_process(settings, env=FAST) as (_, first), \
            hub_process(settings, env=FAST) as (_, second):
        async with httpx.AsyncClient(base_url=first) as http:
            chat = await make_chat(http, a_token, [b])
        online = {"type": "presence", "chat_id": chat, "user_id": a, "online": True}
        offline = {**online, "online": False}
        sock_b = await connect(ws(second), b_token)

        tab_1 = await connect(ws(first), a_token)
        assert await sock_b.next() == online
        async with httpx.AsyncClient(base_url=second) as http:
            presence = await http.get(f"/api/v1/chats/{chat}/presence", headers=bearer(b_token))
            assert presence.json() == {"online": [a, b]}

        await tab_1.send({"type": "typing", "chat_id": chat})
        assert await sock_b.next() == {"type": "typing", "chat_id": chat, "user_id": a}
        await tab_1.send({"type": "typing", "chat_id": chat})  # throttled across processes too
        async with httpx.AsyncClient(base_url=second) as http:
            typed = await http.post(f"/api/v1/chats/{chat}/typing", headers=bearer(a_token))
            assert typed.status_code == 204
        await sock_b.silent(0.5)

        tab_2 = await connect(ws(second), a_token)  # a second tab, on the other process
        await tab_1.close()
        await sock_b.silent(2.0)  # no offline in between
        await tab_2.close()
        assert await sock_b.next() == offline
        await sock_b.close()


async def test_a_killed_process_drops_its_users_within_30_s(settings: Settings) -> None:
    (a, a_token), (b, b_token) = await make_users(settings, 2)
    async with hub_process(settings, env=FAST) as (doomed, first), \
            hub_process(settings, env=FAST) as (_, second):
        async with httpx.AsyncClient(base_url=first) as http:
            chat = await make_chat(http, a_token, [b])
        sock_b = await connect(ws(second), b_token)
        sock_a = await connect(ws(first), a_token)
        assert (await sock_b.next())["online"] is True
        os.killpg(doomed.pid, signal.SIGKILL)  # no graceful stop, no clean-up
        killed = time.monotonic()
        assert await sock_b.next(timeout=30) == {"type": "presence", "chat_id": chat,
                                                 "user_id": a, "online": False}
        assert time.monotonic() - killed < 30
        async with httpx.AsyncClient(base_url=second) as http:
            presence = await http.get(f"/api/v1/chats/{chat}/presence", headers=bearer(b_token))
            assert presence.json() == {"online": [b]}
        del sock_a
        await sock_b.close()
