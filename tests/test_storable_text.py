"""Text the database cannot store (NUL, lone surrogates): refused with 422 when a client sends
it, cleaned when a third party (a fetched page, a parser) does; never a 500, never a stalled
loop. On both backends: PostgreSQL refuses such text, SQLite would hide the bug."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select

from hub.db import Database
from hub.settings import Settings
from hub.storable_text import clean, clean_json, unstorable_json_path
from parser_bridge.parse.models import ParseRequest
from tests.conftest import Account, RunningHub, register, serve_hub, unique_name
from tests.page_server import NUL_PAGE_CLEANED, PageServer, serve_pages
from tests.parser_worker_process import run_worker
from tests.wsutil import connect

PARSER = {"Authorization": "Bearer test-parser-token"}
HUB_KEY = {"Authorization": "Bearer test-hub-api-key"}
JSON = {"Content-Type": "application/json"}
NUL, SURROGATE = "\\u0000", "\\ud800"  # as JSON spells them


@pytest.mark.parametrize(("text", "cleaned"), [
    ("plain", "plain"), ("a\x00b", "ab"), ("\x00\x00", ""), ("a\ud800b", "a\ufffdb"),
    ("\udfff\x00", "\ufffd"), ("😀 ok", "😀 ok"), ("tab\tnewline\n", "tab\tnewline\n"),
])
def test_clean_removes_nul_and_replaces_lone_surrogates(text: str, cleaned: str) -> None:
    assert clean(text) == cleaned


@pytest.mark.parametrize(("value", "found"), [
    ({"a": "fine", "b": [1, "ok", {"c": None}]}, None),
    ({"a": "x\x00"}, ("a", "must not contain NUL characters (U+0000)")),
    ({"a": {"b": [0, "\ud800"]}}, ("a.b.1", "must not contain lone surrogates (U+D800 to U+DFFF)")),
    ({"a": {"k\x00": 1}}, ("a.k", "key must not contain NUL characters (U+0000)")),
    (["\x00"], ("0", "must not contain NUL characters (U+0000)")),
    ("\x00", ("body", "must not contain NUL characters (U+0000)")),
])
def test_unstorable_json_path_names_the_first_bad_string_or_key(
        value: Any, found: tuple[str, str] | None) -> None:
    assert unstorable_json_path(value) == found
    assert unstorable_json_path(clean_json(value)) is None


@pytest.fixture
async def pages() -> AsyncIterator[PageServer]:
    async with serve_pages() as server:
        yield server


@pytest.fixture
def text_settings(settings: Settings) -> Settings:
    """Own Redis key prefix (no other test's jobs); the embedded parser may fetch 127.0.0.1."""
    return replace(settings, redis_channel_prefix=f"{unique_name('st')}:", parser_allow_private=True,
                   exchange_service_url="http://127.0.0.1:9")


@pytest.fixture
async def text_hub(text_settings: Settings) -> AsyncIterator[RunningHub]:
    async with serve_hub(text_settings) as running:
        yield running


Case = tuple[str, str, str, dict[str, str], str]


def _refusals(alice: Account, bob: Account, chat_id: int, parse_id: int) -> list[Case]:
    """(method, path, JSON body text, headers, the field the 422 must name)."""
    user, hub_key = {**alice.headers, **JSON}, {**HUB_KEY, **JSON}
    # a password is never stored as text (only its hash), so a NUL in one is allowed
    login = f'{{"username":"{alice.username}","password":"{SURROGATE}"}}'
    register = f'{{"username":"{unique_name()}","password":"long{SURROGATE}enough"}}'
    cases: list[Case] = [("POST", "/api/v1/auth/login", login, JSON, "password"),
                         ("POST", "/api/v1/auth/register", register, JSON, "password")]
    for bad in (NUL, SURROGATE):
        cases += [
            ("POST", "/api/v1/auth/register", f'{{"username":"x{bad}yz","password":"long enough"}}',
             JSON, "username"),
            ("POST", "/api/v1/chats", f'{{"title":"a{bad}b","member_ids":[{bob.id}]}}', user, "title"),
            ("POST", f"/api/v1/chats/{chat_id}/messages", f'{{"text":"hi{bad}"}}', user, "text"),
            ("POST", "/api/v1/publish",
             f'{{"user_ids":[{alice.id}],"name":"n","data":{{"a":[{{"b":"{bad}"}}]}}}}', hub_key, "data"),
            ("POST", "/api/v1/publish",
             f'{{"user_ids":[{alice.id}],"name":"n","data":{{"k{bad}":1}}}}', hub_key, "data"),
            ("POST", "/api/v1/parse", f'{{"url":"http://example.com/{bad}"}}', user, "url"),
            ("PUT", f"/api/v1/parse/{parse_id}/result", f'{{"status":"failure","error":"a{bad}b"}}',
             {**PARSER, **JSON}, "error"),
            ("PUT", f"/api/v1/parse/{parse_id}/result", f'{{"status":"success","title":"t{bad}","html":""}}',
             {**PARSER, **JSON}, "title"),
            ("PUT", f"/api/v1/parse/{parse_id}/result", f'{{"status":"success","html":"<p>{bad}"}}',
             {**PARSER, **JSON}, "html"),
            ("POST", "/api/v1/exchange", f'{{"exchange_rate":"1{bad}","bills":[]}}', user, "exchange_rate"),
        ]
    return cases


async def test_rest_bodies_with_unstorable_text_are_422_naming_the_field_and_write_nothing(
        text_hub: RunningHub, pages: PageServer, db: Database) -> None:
    hub = text_hub
    alice, bob = await register(hub.http), await register(hub.http)
    created = await hub.http.post("/api/v1/chats", json={"title": "room", "member_ids": [bob.id]},
                                  headers=alice.headers)
    assert created.status_code == 201, created.text
    chat_id = created.json()["id"]
    parse_id = int((await hub.http.post("/api/v1/parse", json={"url": pages.url("/hang")},
                                        headers=alice.headers)).json()["request_id"])
    before = (await hub.http.get("/api/v1/events", headers=alice.headers)).json()["last_event_id"]

    for method, path, body, headers, field in _refusals(alice, bob, chat_id, parse_id):
        answer = await hub.http.request(method, path, content=body.encode(), headers=headers)
        assert answer.status_code == 422, (path, body, answer.status_code, answer.text)
        refused = answer.json()
        assert refused["error"] == "invalid", refused
        named = [name for name in refused["fields"] if name == field or name.startswith(field + ".")]
        assert named, (body, refused)
        assert field in refused["detail"]

    # nothing was written: no event, chat, message, account or request, the request still pending
    after = (await hub.http.get("/api/v1/events", headers=alice.headers)).json()
    assert after["last_event_id"] == before
    chats = (await hub.http.get("/api/v1/chats", headers=alice.headers)).json()["items"]
    assert [chat["title"] for chat in chats] == ["room"]
    messages = (await hub.http.get(f"/api/v1/chats/{chat_id}/messages", headers=alice.headers)).json()
    assert messages["items"] == []
    shown = (await hub.http.get(f"/api/v1/parse/{parse_id}", headers=alice.headers)).json()
    assert shown["status"] == "pending"
    async with db.sessions() as session:
        count = await session.scalar(select(func.count()).select_from(ParseRequest)
                                     .where(ParseRequest.owner_id == alice.id))
    assert count == 1


async def test_refresh_and_search_with_unstorable_text_are_not_500(text_hub: RunningHub) -> None:
    hub = text_hub
    alice = await register(hub.http)
    refresh = await hub.http.post("/api/v1/auth/refresh", content=f'{{"refresh_token":"a{NUL}b"}}'.encode(),
                                  headers=JSON)
    assert refresh.status_code == 401, refresh.text
    refresh = await hub.http.post("/api/v1/auth/refresh", headers=JSON,
                                  content=f'{{"refresh_token":"a{SURROGATE}"}}'.encode())
    assert refresh.status_code == 422, refresh.text
    assert "refresh_token" in refresh.json()["fields"]
    search = await hub.http.get("/api/v1/users", params={"q": "a\x00"}, headers=alice.headers)
    assert search.status_code == 422, search.text


async def test_a_fetched_page_with_nul_bytes_is_stored_cleaned(
        text_hub: RunningHub, pages: PageServer) -> None:
    hub = text_hub
    alice = await register(hub.http)
    socket = await connect(hub.ws_url, alice.access_token)
    parser = run_worker(hub, PARSER_ALLOW_PRIVATE="1") if hub.settings.redis_url else contextlib.nullcontext()
    async with parser:
        answer = await hub.http.post("/api/v1/parse", json={"url": pages.url("/nul")}, headers=alice.headers)
        request_id = answer.json()["request_id"]
        (frame,) = await socket.events(1, timeout=20)
    assert frame["name"] == "parse.completed"
    assert frame["data"] == {"request_id": request_id, "url": pages.url("/nul"), "status": "success",
                             "title": "Nul in the title", "error": None}
    page = await hub.http.get(f"/api/v1/parse/{request_id}/html", headers=alice.headers)
    assert page.text == NUL_PAGE_CLEANED
    await socket.close()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_bad_queue_result_does_not_delay_another_users_result(text_hub: RunningHub) -> None:
    hub = text_hub
    prefix = hub.settings.redis_channel_prefix
    alice, bob = await register(hub.http), await register(hub.http)
    ids = []
    for who in (alice, alice, bob):  # nobody fetches: no worker runs
        answer = await hub.http.post("/api/v1/parse", json={"url": "http://192.0.2.1/"}, headers=who.headers)
        ids.append(int(answer.json()["request_id"]))
    nul_id, surrogate_id, bob_id = ids
    bob_socket = await connect(hub.ws_url, bob.access_token)
    redis = aioredis.from_url(str(hub.settings.redis_url))
    try:
        # the bad ones come first in the loop's order (lower ids)
        await redis.set(f"{prefix}parser:results:{nul_id}",
                        orjson.dumps({"status": "success", "title": "bad\x00title", "html": "a\x00b"}), ex=60)
        await redis.set(f"{prefix}parser:results:{surrogate_id}",
                        b'{"status": "failure", "error": "lone \\ud800 here"}', ex=60)
        started = time.monotonic()
        await redis.set(f"{prefix}parser:results:{bob_id}",
                        orjson.dumps({"status": "success", "title": "Bob's", "html": "<p>"}), ex=60)
        (frame,) = await bob_socket.events(1, timeout=10)
        assert time.monotonic() - started < 2.5
        assert frame["data"]["request_id"] == bob_id
        assert frame["data"]["title"] == "Bob's"
    finally:
        await redis.aclose()
        await bob_socket.close()
    first = (await hub.http.get(f"/api/v1/parse/{nul_id}", headers=alice.headers)).json()
    assert (first["status"], first["title"]) == ("success", "badtitle")
    assert (await hub.http.get(f"/api/v1/parse/{nul_id}/html", headers=alice.headers)).text == "ab"
    second = (await hub.http.get(f"/api/v1/parse/{surrogate_id}", headers=alice.headers)).json()
    assert (second["status"], second["error"]) == ("failure", "lone \ufffd here")
