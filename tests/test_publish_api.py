"""The server publish API and the history API (§9): credentials, validation (bad input is a 422,
never a 500), limits, idempotency, big batches, history pages under concurrent publishes."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import insert, select

from hub.db import Database, utcnow
from hub.models import Stream, User
from hub.streams import new_epoch
from tests.conftest import RUN_ID, RunningHub
from tests.wsutil import connect, make_users, publish_to

KEY = {"Authorization": "Bearer test-hub-api-key"}
JSON_KEY = {**KEY, "Content-Type": "application/json"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"},
                                     {"Authorization": "Bearer test-hub-api-key-and-more"}])
async def test_publish_without_the_api_key_is_403(hub: RunningHub, headers: dict[str, str]) -> None:
    response = await hub.http.post("/api/v1/publish", json={"user_ids": [1], "name": "x"}, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.parametrize(("body", "field"), [
    ({"user_ids": [], "name": "ok"}, "user_ids"),
    ({"user_ids": [0], "name": "ok"}, "user_ids.0"),
    ({"user_ids": ["a"], "name": "ok"}, "user_ids.0"),
    ({"user_ids": [1], "name": "Bad Name"}, "name"),
    ({"user_ids": [1], "name": "a" * 65}, "name"),
    ({"user_ids": [1], "name": "ok", "data": [1, 2]}, "data"),
    ({"user_ids": [1], "name": "ok", "extra": 1}, "extra"),
    ({"name": "ok"}, "user_ids"),
    ({"user_ids": list(range(1, 10_002)), "name": "ok"},
     "user_ids"),
])
async def test_publish_validation_names_the_field(hub: RunningHub, body: dict[str, object],
                                                  field: str) -> None:
    response = await hub.http.post("/api/v1/publish", json=body, headers=KEY)
    assert response.status_code == 422, response.text
    assert field in response.json()["fields"]


async def test_unknown_users_are_422_naming_them_and_nothing_is_written(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    response = await hub.http.post("/api/v1/publish", json={"user_ids": [user_id, 99_999_999], "name": "x"},
                                   headers=KEY)
    assert response.status_code == 422
    assert "99999999" in response.json()["detail"]
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 0


async def test_data_over_64_kib_is_413(hub: RunningHub) -> None:
    ((user_id, _),) = await make_users(hub.settings, 1)
    response = await hub.http.post("/api/v1/publish", headers=KEY,
                                   json={"user_ids": [user_id], "name": "x", "data": {"b": "x" * 70_000}})
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"


async def test_non_json_is_415(hub: RunningHub) -> None:
    response = await hub.http.post("/api/v1/publish", content=b"user_ids=1", headers=KEY)
    assert response.status_code == 415


async def test_idempotency_key_replays_the_first_answer_and_publishes_nothing_new(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    sock = await connect(hub.ws_url, token)
    body = {"user_ids": [user_id], "name": "once", "data": {"n": 1}}
    headers = {**KEY, "Idempotency-Key": f"key-{RUN_ID}-{user_id}"}
    first = await hub.http.post("/api/v1/publish", json=body, headers=headers)
    again = await hub.http.post("/api/v1/publish", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json() == {"events": {str(user_id): 1}}
    assert len(await sock.events(1)) == 1
    await sock.silent(0.5)
    other = await hub.http.post("/api/v1/publish", json={**body, "data": {"n": 2}}, headers=headers)
    assert other.status_code == 409
    bad = await hub.http.post("/api/v1/publish", json=body, headers={**KEY, "Idempotency-Key": "x" * 256})
    assert bad.status_code == 422
    await sock.close()


async def test_concurrent_retries_with_one_key_write_one_event(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = {"user_ids": [user_id], "name": "race"}
    headers = {**KEY, "Idempotency-Key": f"race-{RUN_ID}-{user_id}"}
    answers = await asyncio.gather(*(hub.http.post("/api/v1/publish", json=body, headers=headers)
                                     for _ in range(5)))
    assert {a.status_code for a in answers} == {202}
    assert {a.text for a in answers} == {answers[0].text}
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 1


async def test_a_refused_keyed_publish_writes_nothing_and_leaves_its_key_free(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    headers = {**KEY, "Idempotency-Key": f"refused-{RUN_ID}-{user_id}"}
    refused = await hub.http.post("/api/v1/publish", headers=headers,
                                  json={"user_ids": [user_id, 2**31 - 1], "name": "lost"})
    assert refused.status_code == 422
    assert "Idempotent-Replayed" not in refused.headers
    # Another body under the same key is not a 409: the refused call stored no answer.
    accepted = await hub.http.post("/api/v1/publish", headers=headers,
                                   json={"user_ids": [user_id], "name": "kept"})
    assert accepted.status_code == 202
    assert accepted.json() == {"events": {str(user_id): 1}}  # the refused append left no event
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert [item["name"] for item in history.json()["items"]] == ["kept"]


async def test_a_batch_of_10000_users_is_one_transaction(hub: RunningHub) -> None:
    ids = await _bulk_users(hub, 10_000)
    started = time.perf_counter()
    events = await publish_to(hub, ids, "batch", {"hello": "all"})
    elapsed = time.perf_counter() - started
    assert len(events) == 10_000
    assert set(events) == {str(i) for i in ids}
    assert set(events.values()) == {1}
    print(f"10,000-user publish took {elapsed:.2f}s")
    again = await publish_to(hub, ids[:3], "batch2")
    assert set(again.values()) == {2}


@pytest.mark.parametrize("number", [str(2**64), str(-(2**63) - 1), str(10**30)])
async def test_publish_data_with_an_integer_json_cannot_carry_is_422(hub: RunningHub, number: str) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {number}}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=JSON_KEY)
    assert response.status_code == 422, response.text
    assert "data" in response.json()["fields"]
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 0


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_publish_data_with_a_non_finite_number_is_422_not_silently_null(hub: RunningHub,
                                                                              number: str) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {number}}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=JSON_KEY)
    assert response.status_code == 422, response.text
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 0


async def test_publish_data_with_a_big_but_representable_integer_is_kept(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {2**63 - 1}, "f": 1.5}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=JSON_KEY)
    assert response.status_code == 202, response.text
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["items"][0]["data"] == {"n": 2**63 - 1, "f": 1.5}


@pytest.mark.parametrize("after", [str(2**63), "99999999999999999999999"])
async def test_history_after_beyond_the_id_range_is_422(hub: RunningHub, after: str) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    response = await hub.http.get(f"/api/v1/events?after={after}",
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422, response.text
    assert "after" in response.json()["fields"]


async def test_history_after_at_the_top_of_the_range_is_an_empty_page(hub: RunningHub) -> None:
    ((_, token),) = await make_users(hub.settings, 1)
    response = await hub.http.get(f"/api/v1/events?after={2**63 - 1}",
                                  headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres"])  # READ COMMITTED: each statement sees its own snapshot
async def test_history_never_lists_an_event_past_its_last_event_id(hub: RunningHub) -> None:
    """A page's items are read up to the head read first, so a client that pages to the end and
    resumes from `last_event_id` neither repeats nor skips an event while publishes commit
    between the two statements (300 pages against six publishing loops)."""
    ((user_id, token), (other_id, _)) = await make_users(hub.settings, 2)
    auth = {"Authorization": f"Bearer {token}"}
    stop = asyncio.Event()

    async def pump() -> None:
        while not stop.is_set():
            await publish_to(hub, [user_id, other_id])

    pumps = [asyncio.create_task(pump()) for _ in range(6)]
    beyond: list[tuple[int, int]] = []
    try:
        async with asyncio.timeout(60):
            after = 0
            for _ in range(300):
                page = (await hub.http.get(f"/api/v1/events?after={after}", headers=auth)).json()
                if page["items"] and page["items"][-1]["id"] > page["last_event_id"]:
                    beyond.append((page["items"][-1]["id"], page["last_event_id"]))
                after = max(0, page["last_event_id"] - 2)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*pumps)
    assert beyond == [], f"(newest item, last_event_id) pairs: {beyond[:5]}"


async def _bulk_users(hub: RunningHub, count: int) -> list[int]:
    db = Database(hub.settings.database_url)
    db.open()
    try:
        async with db.sessions.begin() as session:
            now = utcnow()
            prefix = f"b{RUN_ID[:4]}{hub.settings.database_url[:2]}_"
            await session.execute(insert(User), [{"username": f"{prefix}{n}", "created_at": now}
                                                 for n in range(count)])
            ids = list(await session.scalars(select(User.id).where(User.username.like(f"{prefix}%"))))
            await session.execute(insert(Stream), [
                {"user_id": i, "epoch": new_epoch(), "last_id": 0, "published_id": 0, "trimmed_id": 0,
                 "updated_at": now} for i in ids])
    finally:
        await db.close()
    return ids
