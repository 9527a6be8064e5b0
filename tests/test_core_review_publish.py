"""Review of the publish API and history (§2, §9): input the contract calls bad gets 422, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import RunningHub
from tests.wsutil import make_users

KEY = {"Authorization": "Bearer test-hub-api-key", "Content-Type": "application/json"}


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


@pytest.mark.parametrize("number", [str(2**64), str(-(2**63) - 1), str(10**30)])
async def test_publish_data_with_an_integer_json_cannot_carry_is_422(hub: RunningHub, number: str) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {number}}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=KEY)
    assert response.status_code == 422, response.text
    assert "data" in response.json()["fields"]
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 0


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_publish_data_with_a_non_finite_number_is_422_not_silently_null(hub: RunningHub,
                                                                              number: str) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {number}}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=KEY)
    assert response.status_code == 422, response.text
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["last_event_id"] == 0


async def test_publish_data_with_a_big_but_representable_integer_is_kept(hub: RunningHub) -> None:
    ((user_id, token),) = await make_users(hub.settings, 1)
    body = f'{{"user_ids": [{user_id}], "name": "x", "data": {{"n": {2**63 - 1}, "f": 1.5}}}}'
    response = await hub.http.post("/api/v1/publish", content=body.encode(), headers=KEY)
    assert response.status_code == 202, response.text
    history = await hub.http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
    assert history.json()["items"][0]["data"] == {"n": 2**63 - 1, "f": 1.5}
