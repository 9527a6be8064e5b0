"""Chat (protocol §5-§6): rooms, members and messages over REST, delivered live as events."""

from __future__ import annotations

from chat.routes import ChatApi
from chat.service import ChatService
from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature
from hub.identity import Authenticator
from hub.token_buckets import Allow


def chat_feature(db: Database, events: EventBus, authenticator: Authenticator, *,
                 max_members: int, post_allowed: Allow) -> Feature:
    """The chat's routes, for the composition root. `post_allowed` limits posting per user
    (keys `chat.post:{user_id}`, one unit per new message). (Expired idempotency keys are
    removed by the core's retention loop.)"""
    service = ChatService(db, events, max_members=max_members, post_allowed=post_allowed)
    return Feature(routes=ChatApi(service, authenticator).routes())
