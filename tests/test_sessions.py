"""Sessions: logout and password change revoke them; a revoked session's access tokens are
refused by REST at once and its open sockets closed with 4001 within seconds, on every process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import pytest
import websockets
from jose import jwt

from hub.settings import Settings
from tests.conftest import TEST_SECRET, Account, RunningHub, register
from tests.test_processes import hub_process
from tests.wsutil import connect, mint

LOGIN = "/api/v1/auth/login"
LOGOUT = "/api/v1/auth/logout"
PASSWORD = "/api/v1/auth/password"
REFRESH = "/api/v1/auth/refresh"
ME = "/api/v1/auth/me"
CLOSED_WITHIN = 5.0  # seconds: the watch looks every second


@pytest.fixture(scope="module")
def hub(module_hub: RunningHub) -> RunningHub:
    return module_hub


async def _login(http: httpx.AsyncClient, account: Account) -> Account:
    response = await http.post(LOGIN, json={"username": account.username, "password": account.password})
    assert response.status_code == 200, response.text
    body = response.json()
    return Account(account.id, account.username, account.password, body["access_token"],
                   body["refresh_token"])


async def _refresh_status(http: httpx.AsyncClient, refresh_token: str) -> int:
    return (await http.post(REFRESH, json={"refresh_token": refresh_token})).status_code


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, TEST_SECRET, algorithms=["HS256"])
    return claims


async def test_access_tokens_name_their_session(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        account = await register(hub.http)
        refreshed = await hub.http.post(REFRESH, json={"refresh_token": account.refresh_token})
        again = await _login(hub.http, account)
    sid = _claims(account.access_token)["sid"]
    assert sid == _claims(account.refresh_token)["fam"]
    assert _claims(refreshed.json()["access_token"])["sid"] == sid  # a refresh keeps the session
    assert _claims(again.access_token)["sid"] != sid  # a login opens another


async def test_logout_revokes_the_callers_session_only(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        account = await register(hub.http)
        other_device = await _login(hub.http, account)
        assert (await hub.http.post(LOGOUT, headers=account.headers)).status_code == 204
        me = await hub.http.get(ME, headers=account.headers)
        assert me.status_code == 401
        assert me.json()["error"] == "unauthorized"
        assert await _refresh_status(hub.http, account.refresh_token) == 401
        assert (await hub.http.post(LOGOUT, headers=account.headers)).status_code == 401
        assert (await hub.http.get(ME, headers=other_device.headers)).status_code == 200
        renewed = await hub.http.post(REFRESH, json={"refresh_token": other_device.refresh_token})
        assert renewed.status_code == 200


async def test_logout_with_a_refresh_token_and_bad_bodies(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        account, stranger = await register(hub.http), await register(hub.http)
        sessionless = mint(hub.settings, account.id, 600)  # minted without a session
        assert (await hub.http.post(LOGOUT, headers=_bearer(sessionless))).status_code == 401
        foreign = await hub.http.post(LOGOUT, headers=_bearer(sessionless),
                                      json={"refresh_token": stranger.refresh_token})
        assert foreign.status_code == 401
        assert (await hub.http.get(ME, headers=stranger.headers)).status_code == 200
        not_json = await hub.http.post(LOGOUT, headers={**account.headers, "Content-Type": "text/plain"},
                                       content=b"x")
        assert not_json.status_code == 415
        invalid = await hub.http.post(LOGOUT, headers=account.headers, json={"refresh_token": 5})
        assert invalid.status_code == 422
        assert set(invalid.json()) >= {"error", "detail"}
        done = await hub.http.post(LOGOUT, headers=_bearer(sessionless),
                                   json={"refresh_token": account.refresh_token})
        assert done.status_code == 204
        assert (await hub.http.get(ME, headers=account.headers)).status_code == 401
        assert await _refresh_status(hub.http, account.refresh_token) == 401


async def test_password_change_revokes_every_session_and_returns_a_new_pair(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        account = await register(hub.http)
        second = await _login(hub.http, account)
        wrong = await hub.http.post(PASSWORD, headers=account.headers,
                                    json={"current_password": "not it", "new_password": "brand new pw"})
        assert wrong.status_code == 403
        assert wrong.json()["error"] == "forbidden"
        short = await hub.http.post(PASSWORD, headers=account.headers,
                                    json={"current_password": account.password, "new_password": "short"})
        assert short.status_code == 422
        assert "new_password" in short.json()["fields"]
        changed = await hub.http.post(PASSWORD, headers=account.headers,
                                      json={"current_password": account.password,
                                            "new_password": "brand new pw"})
        assert changed.status_code == 200, changed.text
        pair = changed.json()
        assert set(pair) == {"access_token", "refresh_token", "token_type", "expires_in"}
        for old in (account, second):
            assert (await hub.http.get(ME, headers=old.headers)).status_code == 401
            assert await _refresh_status(hub.http, old.refresh_token) == 401
        assert (await hub.http.get(ME, headers=_bearer(pair["access_token"]))).status_code == 200
        assert await _refresh_status(hub.http, pair["refresh_token"]) == 200
        old_password = await hub.http.post(LOGIN, json={"username": account.username,
                                                        "password": account.password})
        assert old_password.status_code == 401
        new_password = await hub.http.post(LOGIN, json={"username": account.username,
                                                        "password": "brand new pw"})
        assert new_password.status_code == 200


async def test_revoked_sessions_sockets_close_with_4001_within_seconds(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        account = await register(hub.http)
        other = await _login(hub.http, account)
        doomed = await connect(hub.ws_url, account.access_token)
        kept = await connect(hub.ws_url, other.access_token)
        started = time.monotonic()
        assert (await hub.http.post(LOGOUT, headers=account.headers)).status_code == 204
        assert await doomed.closed(timeout=CLOSED_WITHIN) == 4001
        assert time.monotonic() - started < CLOSED_WITHIN
        await kept.send({"type": "ping"})
        assert (await kept.next())["type"] == "pong"
        # once the process has seen the revocation, the token cannot open a socket either
        ws = await websockets.connect(hub.ws_url)
        await ws.send(json.dumps({"type": "auth", "token": account.access_token}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
        # a password change ends the remaining one
        changed = await hub.http.post(PASSWORD, headers=other.headers,
                                      json={"current_password": account.password,
                                            "new_password": "another new pw"})
        assert changed.status_code == 200
        assert await kept.closed(timeout=CLOSED_WITHIN) == 4001


async def test_socket_refresh_moves_the_connection_to_the_new_session(hub: RunningHub) -> None:
    async with asyncio.timeout(60):
        account = await register(hub.http)
        second = await _login(hub.http, account)
        socket = await connect(hub.ws_url, account.access_token)
        await socket.send({"type": "refresh", "token": second.access_token})
        assert (await socket.next())["type"] == "refreshed"
        assert (await hub.http.post(LOGOUT, headers=account.headers)).status_code == 204
        await socket.silent(2.5)  # its first session is gone, but it now rides the second
        assert (await hub.http.post(LOGOUT, headers=second.headers)).status_code == 204
        assert await socket.closed(timeout=CLOSED_WITHIN) == 4001


@pytest.mark.parametrize("backend", ["postgres"])
async def test_logout_on_one_process_closes_the_socket_on_another(settings: Settings) -> None:
    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(90):
        _, first = await stack.enter_async_context(hub_process(settings))
        _, second = await stack.enter_async_context(hub_process(settings))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=first, timeout=10))
        account = await register(http)
        socket = await connect(second.replace("http://", "ws://") + "/ws", account.access_token)
        assert (await http.post(LOGOUT, headers=account.headers)).status_code == 204
        assert await socket.closed(timeout=CLOSED_WITHIN) == 4001
        assert (await http.get(second + ME, headers=account.headers)).status_code == 401
