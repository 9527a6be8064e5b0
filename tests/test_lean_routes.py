"""The lean path past starlette (hub/lean_routes.py): the publish call keeps its contract on it
(error shapes, the replay header, the metric), and other requests still go through starlette."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from hub.errors import ApiError, Invalid, api_error_handler, http_exception_handler, internal_error_handler
from hub.lean_routes import Answer, LeanRequest, LeanRoutes, as_response
from hub.metrics import Metrics
from tests.conftest import RunningHub
from tests.wsutil import make_users

KEY = {"Authorization": "Bearer test-hub-api-key"}


async def test_publish_answers_and_refusals_are_counted_under_the_route(hub: RunningHub) -> None:
    ((user_id, _),) = await make_users(hub.settings, 1)
    async with asyncio.timeout(20):
        ok = await hub.http.post("/api/v1/publish", json={"user_ids": [user_id], "name": "e"}, headers=KEY)
        assert ok.status_code == 202, ok.text
        assert ok.headers["content-type"] == "application/json"
        assert ok.json() == {"events": {str(user_id): 1}}
        assert (await hub.http.post("/api/v1/publish", json={"user_ids": [user_id], "name": "e"})
                ).status_code == 403
        text = (await hub.http.get("/metrics")).text
    assert re.search(r'hub_http_requests_total\{method="POST",route="/api/v1/publish",status="202"\} 1\.0',
                     text), text
    assert 'route="/api/v1/publish",status="403"} 1.0' in text


async def test_a_replayed_publish_carries_the_replay_header(hub: RunningHub) -> None:
    ((user_id, _),) = await make_users(hub.settings, 1)
    call = {"json": {"user_ids": [user_id], "name": "e"}, "headers": {**KEY, "Idempotency-Key": "k-1"}}
    async with asyncio.timeout(20):
        first = await hub.http.post("/api/v1/publish", **call)  # type: ignore[arg-type]
        again = await hub.http.post("/api/v1/publish", **call)  # type: ignore[arg-type]
    assert first.status_code == again.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content


async def test_other_methods_on_a_lean_path_still_get_starlettes_405(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        response = await hub.http.get("/api/v1/publish", headers=KEY)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.json()["error"] == "method_not_allowed"


async def _echo(request: LeanRequest) -> Answer:
    body = await request.body(limit=16)
    if body == b"boom":
        raise RuntimeError("a bug")
    if body == b"bad":
        raise Invalid({"body": "bad"})
    auth = (request.header(b"authorization") or "").encode()
    return Answer(201, b'{"got":"%s","auth":"%s"}' % (body, auth), ((b"x-extra", b"1"),))


def _app(metrics: Metrics) -> Starlette:
    async def declared(request: Request) -> Response:
        return as_response(await _echo(LeanRequest(request.scope, request.receive)))

    handlers = {ApiError: api_error_handler, HTTPException: http_exception_handler,
                Exception: internal_error_handler}
    app = Starlette(routes=[Route("/echo", declared, methods=["POST"])], exception_handlers=handlers)
    app.add_middleware(LeanRoutes, routes={("POST", "/echo"): _echo}, handlers=handlers, metrics=metrics)
    return app


async def test_a_lean_route_answers_raises_and_limits_as_the_declared_route_would() -> None:
    metrics = Metrics()
    transport = httpx.ASGITransport(app=_app(metrics), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client, \
            asyncio.timeout(10):
        ok = await client.post("/echo", content=b"hi", headers={"Authorization": "a", "authorization": "b"})
        invalid = await client.post("/echo", content=b"bad")
        bug = await client.post("/echo", content=b"boom")
        too_large = await client.post("/echo", content=b"x" * 17)
        wrong_method = await client.get("/echo")
    assert (ok.status_code, ok.json(), ok.headers["x-extra"]) == (201, {"got": "hi", "auth": "a"}, "1")
    assert ok.headers["content-length"] == str(len(ok.content))
    assert (invalid.status_code, invalid.json()["fields"]) == (422, {"body": "bad"})
    assert (bug.status_code, bug.json()) == (500, {"error": "internal", "detail": "internal server error"})
    assert (too_large.status_code, too_large.json()["error"]) == (413, "too_large")
    assert wrong_method.status_code == 405
    text = metrics.render().decode()
    for status in ("201", "422", "500", "413"):
        assert f'method="POST",route="/echo",status="{status}"}} 1.0' in text, text


async def test_a_client_leaving_before_its_body_arrived_is_a_client_disconnect() -> None:
    messages = iter([{"type": "http.request", "body": b"part", "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict[str, object]:
        return next(messages)

    request = LeanRequest({"type": "http", "headers": []}, receive)  # type: ignore[arg-type]
    with pytest.raises(ClientDisconnect):
        await request.body()


async def test_pipelined_publishes_are_answered_whole_and_in_order_and_close_is_kept(hub: RunningHub) -> None:
    """On the hub's HTTP protocol an answer's head and body go out as one write; pipelined
    calls still get their answers in order, and `Connection: close` still closes after the
    answer."""
    ((user_id, _),) = await make_users(hub.settings, 1)
    host, port = hub.base_url.removeprefix("http://").split(":")
    body = b'{"user_ids":[%d],"name":"e"}' % user_id

    def call(extra: bytes = b"") -> bytes:
        return (b"POST /api/v1/publish HTTP/1.1\r\nhost: hub\r\nauthorization: Bearer test-hub-api-key\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
                % (len(body), extra, body))

    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(20):
            writer.write(call() + call() + call(b"connection: close\r\n"))
            received = await reader.read(-1)  # until the server closes
    finally:
        writer.close()
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [answer.split(b" ", 1)[0] for answer in answers] == [b"202"] * 3, received
    assert [answer.rsplit(b"\r\n\r\n", 1)[1] for answer in answers] == [
        b'{"events":{"%d":%d}}' % (user_id, n) for n in (1, 2, 3)]
    assert b"connection: close" in answers[2]
