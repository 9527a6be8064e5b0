"""The error shape of §2 across the app: 404/405/413/415/422, and never a 500 for bad input."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hub.http import MAX_BODY_BYTES
from tests.conftest import RunningHub, register

REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"


@pytest.fixture(scope="module")
def hub(module_hub: RunningHub) -> RunningHub:
    return module_hub


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "Traceback" not in response.text
    return dict(body)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx",
                                          "json", ""])
async def test_415_without_a_json_content_type(hub: RunningHub, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=b'{"username": "abc", "password": "12345678"}',
                                       headers=headers)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/vnd.api+json"])
async def test_json_content_type_variants_are_accepted(hub: RunningHub, content_type: str) -> None:
    async with asyncio.timeout(30):
        response = await hub.http.post(LOGIN, content=b'{"username": "nobody", "password": "12345678"}',
                                       headers={"Content-Type": content_type})
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("body", [
    b"", b"{", b"not json", b'{"username": "abc",}', b"{'username': 'abc'}", b"\xff\xfe\x00",
    b"[" * 10_000 + b"]" * 10_000, b'{"a": "\\ud800", "b": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    b'{"username": "abc", "password": "12345678"} trailing', b"NaN",
])
async def test_422_for_a_body_that_is_not_json(hub: RunningHub, body: bytes) -> None:
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    answer = assert_error(response, 422, "invalid")
    assert "body" in answer["detail"]


async def test_422_names_the_field_whose_text_is_a_lone_surrogate(hub: RunningHub) -> None:
    body = b'{"username": "\\ud800", "password": "12345678"}'
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    answer = assert_error(response, 422, "invalid")
    assert answer["fields"] == {"username": "must not contain lone surrogates (U+D800 to U+DFFF)"}


@pytest.mark.parametrize("body", [b"[]", b'"a string"', b"42", b"null", b"true",
                                  b'[{"username": "abc", "password": "12345678"}]'])
async def test_422_for_json_that_is_not_an_object(hub: RunningHub, body: bytes) -> None:
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 422, "invalid")


async def test_413_for_a_body_over_one_mebibyte_with_content_length(hub: RunningHub) -> None:
    body = b'{"username": "' + b"a" * MAX_BODY_BYTES + b'", "password": "12345678"}'
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "too_large")


async def test_413_for_a_chunked_body_over_one_mebibyte(hub: RunningHub) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "'
        for _ in range(20):
            yield b"a" * 65_536
        yield b'", "password": "12345678"}'

    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=chunks(),
                                       headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, "too_large")


async def test_a_body_just_under_the_limit_is_read(hub: RunningHub) -> None:
    padding = MAX_BODY_BYTES - 100
    body = b'{"username": "abc", "password": "12345678", "pad": "' + b"x" * padding + b'"}'
    assert len(body) <= MAX_BODY_BYTES
    async with asyncio.timeout(30):
        response = await hub.http.post(REGISTER, content=body, headers={"Content-Type": "application/json"})
    answer = assert_error(response, 422, "invalid")  # read in full, then refused for its extra field
    assert set(answer["fields"]) == {"pad"}


async def test_404_and_405_have_the_error_shape(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        missing = await hub.http.get("/api/v1/no/such/thing")
        nested = await hub.http.get("/api/v1/auth/me/extra")
        wrong_method = await hub.http.get(REGISTER)
        delete_me = await hub.http.delete("/api/v1/auth/me")
        put_healthz = await hub.http.put("/healthz")
    assert_error(missing, 404, "not_found")
    assert_error(nested, 404, "not_found")
    assert_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert_error(delete_me, 405, "method_not_allowed")
    assert_error(put_healthz, 405, "method_not_allowed")


async def test_405_allow_names_every_method_of_the_path(hub: RunningHub) -> None:
    """GET and POST /api/v1/chats are two routes; a 405 on that path named only the first's POST."""
    async with asyncio.timeout(30):
        chats = await hub.http.delete("/api/v1/chats")
        messages = await hub.http.put("/api/v1/chats/1/messages")
        healthz = await hub.http.post("/healthz")
    assert_error(chats, 405, "method_not_allowed")
    assert chats.headers["allow"] == "GET, HEAD, POST"
    assert messages.headers["allow"] == "GET, HEAD, POST"
    assert healthz.headers["allow"] == "GET, HEAD"


async def test_errors_carry_exactly_error_and_detail(hub: RunningHub) -> None:
    async with asyncio.timeout(30):
        unauthorized = await hub.http.get("/api/v1/auth/me")
        missing = await hub.http.get("/nope")
    assert set(unauthorized.json()) == {"error", "detail"}
    assert set(missing.json()) == {"error", "detail"}


HOSTILE_BODIES: list[Any] = [
    {"username": "a\u0000bc", "password": "12345678"},
    {"username": "abc", "password": "1234567\u0000"},
    {"username": "ab\u202ec", "password": "12345678"},
    {"username": "日本語の名前", "password": "12345678"},
    {"username": "😀😀😀", "password": "😀" * 8},
    {"username": "abc", "password": "😀" * 129},
    {"username": 10**400, "password": 1e308},
    {"username": -(2**63), "password": 2**64},
    {"username": 1.5, "password": True},
    {"username": {"$ne": None}, "password": {"$gt": ""}},
    {"username": ["abc"], "password": None},
    {"username": "abc' OR '1'='1", "password": "' OR 1=1 --"},
    {"username": "%", "password": "12345678"},
    {"username": "a" * 100_000, "password": "b" * 100_000},
    {"refresh_token": "\u0000"},
    {"refresh_token": "a.b.c"},
    {"refresh_token": None},
]


@pytest.mark.parametrize("path", [REGISTER, LOGIN, REFRESH])
async def test_no_500_for_hostile_bodies(hub: RunningHub, path: str) -> None:
    async with asyncio.timeout(120):
        for body in HOSTILE_BODIES:
            response = await hub.http.post(path, json=body)
            assert response.status_code in (200, 201, 401, 409, 422), (body, response.text)
            if response.status_code >= 400:
                assert_error(response, response.status_code, response.json()["error"])


async def test_no_500_for_hostile_queries_and_headers(hub: RunningHub) -> None:
    account = await register(hub.http)
    queries = ["q=%00", "q=%FF%FE", "q=" + "%25" * 10, "q=%C3%28", "q=abc&q=def", "q[]=a", "q=" + "9" * 400,
               "q=\u65e5\u672c", "q=a%0Ab", "%00=1"]
    async with asyncio.timeout(60):
        for query in queries:
            response = await hub.http.get(f"/api/v1/users?{query}", headers=account.headers)
            assert response.status_code in (200, 422), (query, response.text)
        for header in ("Bearer \u00ff\u00fe", "Bearer " + "a" * 8000, "Bearer a.b.c.d.e",
                       "Bearer ...", "Bearer eyJ.eyJ.x"):
            response = await hub.http.get("/api/v1/auth/me",
                                          headers={"Authorization": header.encode("latin-1")})
            assert_error(response, 401, "unauthorized")
        for path in ("/api/v1/auth/me/../me", "/api/v1/%00", "/api/v1/users/" + "x" * 5000):
            response = await hub.http.get(path, headers=account.headers)
            assert response.status_code < 500, path


async def test_a_client_gone_mid_body_logs_no_error_and_is_not_counted_as_a_500(
        hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    port = int(hub.base_url.rsplit(":", 1)[1])
    for _ in range(3):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST " + LOGIN.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"username\": \"")
        await writer.drain()
        await asyncio.sleep(0.2)  # the endpoint is reading the body when the client goes
        writer.close()
    async with asyncio.timeout(10):
        while True:  # until the hub has seen all three go
            metrics = (await hub.http.get("/metrics")).text
            counted = [line for line in metrics.splitlines()
                       if line.startswith("hub_http_requests_total{") and f'route="{LOGIN}"' in line
                       and 'status="499"' in line]
            if counted and float(counted[0].split()[-1]) >= 3:
                break
            await asyncio.sleep(0.1)
    assert not [line for line in metrics.splitlines()
                if line.startswith("hub_http_requests_total{") and 'status="500"' in line]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
