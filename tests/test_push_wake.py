"""Wake-ups instead of looks: the push decider decides what this process committed once
PUSH_DELAY has passed, and the sender claims what the decider just committed, neither waiting
for its next periodic look (`PushDecider.committed` in hub/push_decider.py, `PushSender.wake`
in hub/push_sender.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hub import push_decider, push_sender
from hub.settings import Settings
from tests import test_push
from tests.conftest import register, serve_hub
from tests.push_service import PushService
from tests.test_push import chat_of, post, quiet, subscribe

push_settings, service = test_push.push_settings, test_push.service  # their fixtures


async def test_commits_wake_the_decider_and_decisions_wake_the_sender(
        push_settings: Settings, service: PushService, monkeypatch: pytest.MonkeyPatch) -> None:
    """With both periodic looks pushed out of the test's reach, each event still becomes one
    push: a chat message (committed in a transaction) and a published event (group commit),
    each after a send, so a wake after a wake works too."""
    monkeypatch.setattr(push_sender, "IDLE_SECONDS", 3600.0)
    monkeypatch.setattr(push_decider, "DECIDE_SECONDS", 3600.0)
    settings = replace(push_settings, push_delay=0.5,
                       push_events=(*push_settings.push_events, "test.ping"))
    async with serve_hub(settings) as hub:
        alice, bob = await register(hub.http), await register(hub.http)
        sub = service.subscribe()
        await subscribe(hub, alice, sub)
        chat_id = await chat_of(hub, bob, alice)
        await post(hub, bob, chat_id, "first")
        await service.wait_accepted(1, sub, timeout=30)
        answer = await hub.http.post(
            "/api/v1/publish", json={"user_ids": [alice.id], "name": "test.ping", "data": {}},
            headers={"Authorization": f"Bearer {settings.hub_api_key}"})
        assert answer.status_code == 202, answer.text
        await service.wait_accepted(2, sub, timeout=30)
        await post(hub, bob, chat_id, "third")
        await service.wait_accepted(3, sub, timeout=30)
        await quiet(1.0)
    assert [p.payload["event"]["name"] for p in service.received] == [
        "chat.message", "test.ping", "chat.message"]
