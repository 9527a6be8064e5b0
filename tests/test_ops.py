"""Operations (§10): /healthz, /readyz with each dependency down, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hub.db import Database
from hub.errors import database_error_handler
from hub.metrics import HttpMetricsMiddleware, Metrics
from hub.migrate import upgrade
from hub.settings import Settings
from tests.conftest import RunningHub, _pg_admin, free_port, private_database, register, serve_hub
from tests.deploy.tls_ca import ThrowawayCA
from tests.wsutil import connect, make_users, publish_to


async def test_healthz(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        response = await hub.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_everything_up(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        response = await hub.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_names_the_broker_when_redis_is_down(settings: Settings) -> None:
    closed = replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serve_hub(closed) as running, asyncio.timeout(20):
        response = await running.http.get("/readyz")
        health = await running.http.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "unavailable"
    assert "broker" in body["detail"]
    assert "redis" in body["detail"]
    assert "database" not in body["detail"]
    assert health.status_code == 200  # alive, only not ready


async def test_readyz_names_the_database_when_it_is_unreachable(settings: Settings) -> None:
    unreachable = replace(settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    async with serve_hub(unreachable) as running, asyncio.timeout(20):
        response = await running.http.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "unavailable"
    assert "database" in body["detail"]
    assert "broker" not in body["detail"]


async def test_readyz_names_both_when_both_are_down(settings: Settings) -> None:
    both = replace(settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x",
                   redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with serve_hub(both) as running, asyncio.timeout(20):
        response = await running.http.get("/readyz")
    assert response.status_code == 503
    assert "database" in response.json()["detail"]
    assert "broker" in response.json()["detail"]


REQUIRED_FAMILIES = {
    "hub_connections": "gauge",
    "hub_events_published": "counter",
    "hub_events_delivered": "counter",
    "hub_delivery_latency_seconds": "histogram",
    "hub_slow_consumer_disconnects": "counter",
    "hub_http_requests": "counter",
}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_has_the_families_of_the_contract(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        response = await hub.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    for name, kind in REQUIRED_FAMILIES.items():
        assert families.get(name) == kind, name


async def test_http_requests_are_counted_by_route_template_and_status(hub: RunningHub) -> None:
    account = await register(hub.http)
    async with asyncio.timeout(20):
        for _ in range(3):
            assert (await hub.http.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
        for _ in range(2):
            assert (await hub.http.get("/api/v1/auth/me")).status_code == 401
        assert (await hub.http.get("/no/such/path/42")).status_code == 404
        text = (await hub.http.get("/metrics")).text
    samples = _samples(text)

    def count(route: str, method: str, status: str) -> float:
        key = ("hub_http_requests_total", (("method", method), ("route", route), ("status", status)))
        return samples.get(key, 0.0)

    assert count("/api/v1/auth/me", "GET", "200") == 3
    assert count("/api/v1/auth/me", "GET", "401") == 2
    assert count("/api/v1/auth/register", "POST", "201") == 1
    assert count("unmatched", "GET", "404") == 1
    assert not any("/no/such/path" in label for (_name, labels), _ in samples.items()
                   for _key, label in labels), "raw paths must not become labels"


async def test_the_metrics_middleware_labels_with_the_template_not_the_path() -> None:
    """Route parameters must not explode the label space: /items/1 and /items/2 are one series."""
    metrics = Metrics()

    async def item(request: Request) -> Response:
        return PlainTextResponse(str(request.path_params["item_id"]))

    app = Starlette(routes=[Route("/items/{item_id:int}", item)])
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client, \
            asyncio.timeout(10):
        for item_id in (1, 2, 3):
            assert (await client.get(f"/items/{item_id}")).status_code == 200
        assert (await client.get("/items/not-a-number")).status_code == 404
    text = metrics.render().decode()
    assert re.search(r'hub_http_requests_total\{method="GET",route="/items/\{item_id\}",'
                     r'status="200"\} 3\.0', text), text
    assert "/items/1" not in text


async def test_every_frame_sent_is_counted_once_with_its_latency(hub: RunningHub) -> None:
    """Live frames and replayed ones alike: the delivered counter and the latency histogram's
    count move together, by exactly the frames the sockets received."""
    async def delivered() -> tuple[float, float, float]:
        samples = _samples((await hub.http.get("/metrics")).text)
        ws = ("transport", "ws")
        return (samples[("hub_events_delivered_total", (ws,))],
                samples[("hub_delivery_latency_seconds_count", (ws,))],
                samples[("hub_delivery_latency_seconds_bucket", (("le", "+Inf"), ws))])

    (first_user, first_token), (second_user, second_token) = await make_users(hub.settings, 2)
    async with asyncio.timeout(20):
        before = await delivered()
        first = await connect(hub.ws_url, first_token)
        twice = [await connect(hub.ws_url, second_token) for _ in range(2)]
        for _ in range(3):
            await publish_to(hub, [first_user, second_user])
        await first.events(3)
        for socket in twice:
            await socket.events(3)
        await first.close()
        await publish_to(hub, [first_user])
        replayed = await connect(hub.ws_url, first_token, last_event_id=3, epoch=first.welcome["epoch"])
        assert [event["id"] for event in await replayed.events(1)] == [4]
        after = await delivered()
        for socket in (*twice, replayed):
            await socket.close()
    assert [a - b for a, b in zip(after, before, strict=True)] == [10, 10, 10]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_requests_while_the_database_is_unreachable_are_503_never_500(settings: Settings) -> None:
    """PostgreSQL down (nothing listens): every request that needs it answers 503 in the
    contract's shape with Retry-After, whatever path opened the connection."""
    unreachable = replace(settings, database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    async with serve_hub(unreachable) as hub, asyncio.timeout(20):
        answers = [
            await hub.http.post("/api/v1/auth/register", json={"username": "nobody", "password": "x" * 12}),
            await hub.http.post("/api/v1/publish", json={"user_ids": [1], "name": "e"},
                                headers={"Authorization": f"Bearer {settings.hub_api_key}"}),
        ]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json() == {"error": "unavailable",
                                 "detail": "a service the hub needs is unreachable; retry"}
        assert answer.headers["retry-after"] == "1"


@pytest.mark.parametrize(("sqlstate", "status"), [
    ("53300", 503),  # too many connections
    ("57P03", 503),  # cannot connect now (starting up)
    ("08006", 503),  # connection failure
    ("23505", 500),  # a unique violation is the hub's bug, not an outage
    (None, 500),
])
async def test_database_errors_that_mean_unavailable_are_503(sqlstate: str | None, status: int) -> None:
    class Orig(Exception):
        pass

    orig = Orig("refused")
    orig.sqlstate = sqlstate  # type: ignore[attr-defined]
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
    answer = await database_error_handler(Request(scope), DBAPIError("SELECT 1", None, orig))
    assert answer.status_code == status
    assert (answer.headers.get("retry-after") == "1") == (status == 503)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_database_connections_dying_cost_a_503_at_most_never_a_500(settings: Settings) -> None:
    """Pooled connections are not pinged before use: when PostgreSQL drops them (a restart, a
    failover, a killed backend) the request that finds one dead gets 503 and the pool reconnects."""
    with private_database("dropped") as plain_url:
        url = plain_url.replace("postgresql://", "postgresql+asyncpg://")
        db = Database(url)
        db.open()
        await upgrade(db)
        await db.close()
        async with serve_hub(replace(settings, database_url=url)) as hub, asyncio.timeout(30):
            account = await register(hub.http)
            for _ in range(3):
                assert (await hub.http.get("/api/v1/auth/me", headers=account.headers)).status_code == 200
            await _pg_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{plain_url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")
            answers = [await hub.http.get("/api/v1/auth/me", headers=account.headers) for _ in range(6)]
    assert [a.status_code for a in answers[1:]] == [200] * 5
    if answers[0].status_code != 200:
        assert answers[0].status_code == 503
        assert answers[0].json() == {"error": "unavailable",
                                     "detail": "the database connection was lost; retry"}


@contextlib.asynccontextmanager
async def _connections_killed_under_a_hub(settings: Settings,
                                          name: str) -> AsyncIterator[tuple[RunningHub, int]]:
    """A hub on a private PostgreSQL database with one user, who got event 1; then PostgreSQL
    terminates every connection to that database, the hub's pool and publish writer included."""
    with private_database(name) as plain_url:
        url = plain_url.replace("postgresql://", "postgresql+asyncpg://")
        db = Database(url)
        db.open()
        await upgrade(db)
        await db.close()
        hub_settings = replace(settings, database_url=url)
        async with serve_hub(hub_settings) as hub, asyncio.timeout(30):
            (user_id, _), = await make_users(hub_settings, 1)
            assert await publish_to(hub, [user_id]) == {str(user_id): 1}
            await _pg_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            f"WHERE datname = '{plain_url.rsplit('/', 1)[1]}' AND pid <> pg_backend_pid()")
            yield hub, user_id


@pytest.mark.parametrize("backend", ["postgres"])
async def test_the_publish_writers_held_connection_dying_costs_a_503_at_most(settings: Settings) -> None:
    """The publish API's group-commit writer keeps its connection between batches: when
    PostgreSQL kills it, one publish may answer 503 (nothing written), and the next ones take a
    fresh connection and go on numbering the streams without a gap."""
    async with _connections_killed_under_a_hub(settings, "writer") as (hub, user_id):
        answers = [await hub.http.post("/api/v1/publish", json={"user_ids": [user_id], "name": "e"},
                                       headers={"Authorization": f"Bearer {settings.hub_api_key}"})
                   for _ in range(4)]
    statuses = [a.status_code for a in answers]
    assert statuses[1:] == [202] * 3
    assert statuses[0] in (202, 503)
    ids = [a.json()["events"][str(user_id)] for a in answers if a.status_code == 202]
    assert ids == list(range(2, 2 + len(ids)))


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_pool_found_dead_elsewhere_takes_the_publish_writers_held_connection_with_it(
        settings: Settings) -> None:
    """When another request finds PostgreSQL's connections killed (and drops the pool's
    generation), the publish writer's held connection, of the same generation, is replaced
    before its next use: the restart costs that one request a 503, not a second one."""
    async with _connections_killed_under_a_hub(settings, "writer_generation") as (hub, user_id):
        assert (await hub.http.get("/readyz")).status_code == 503
        assert await publish_to(hub, [user_id]) == {str(user_id): 2}


def test_certificate_expiry_is_read_at_each_scrape_and_absent_while_unreadable(tmp_path: Path) -> None:
    """TLS_CERTIFICATE_FILE: the metric follows the file (a renewal shows at the next scrape), and
    a missing or broken file leaves the metric out without failing the scrape."""
    chain = tmp_path / "fullchain.pem"
    metrics = Metrics(str(chain))
    assert "hub_tls_certificate_expiry_timestamp_seconds " not in metrics.render().decode()
    chain.write_text("not a certificate")
    assert "hub_tls_certificate_expiry_timestamp_seconds " not in metrics.render().decode()
    issued = ThrowawayCA.create(tmp_path / "ca").issue(["hub.test"], chain, tmp_path / "key.pem")
    samples = _samples(metrics.render().decode())
    assert samples[("hub_tls_certificate_expiry_timestamp_seconds", ())] == \
        issued.not_valid_after_utc.timestamp()
    assert "hub_tls_certificate" not in Metrics().render().decode()
