"""Chat (protocol §5-§6): rooms, members and messages over REST, delivered live as events."""

from __future__ import annotations

from chat.push import chat_message_rule
from chat.routes import ChatApi
from chat.service import ChatService
from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature
from hub.identity import Authenticator
from hub.ratelimit import Limit, RateLimiter


def chat_feature(db: Database, events: EventBus, authenticator: Authenticator,
                 limiter: RateLimiter, post_limit: Limit, *, max_members: int) -> Feature:
    """The chat's routes, for the composition root. `post_limit` limits posting per sender on
    `limiter`. (Expired idempotency keys are removed by the core's retention loop.)"""
    service = ChatService(db, events, limiter, post_limit, max_members=max_members)
    return Feature(routes=ChatApi(service, authenticator).routes(),
                   push_rules={"chat.message": chat_message_rule()})
