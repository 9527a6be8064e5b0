"""Chat (protocol §5-§6, §11): rooms, members and messages over REST, delivered live as events;
presence and typing of members as signals."""

from __future__ import annotations

from chat.events import CHAT_EVENTS, CHAT_MESSAGE
from chat.live import ChatLive
from chat.push import chat_message_rule
from chat.routes import ChatApi
from chat.service import ChatService
from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature
from hub.identity import Authenticator
from hub.presence import Presence
from hub.ratelimit import Limit, RateLimiter
from hub.signals import Signals


def chat_feature(db: Database, events: EventBus, signals: Signals, presence: Presence,
                 authenticator: Authenticator, limiter: RateLimiter, post_limit: Limit,
                 typing_limit: Limit, *, max_members: int, push: bool) -> Feature:
    """The chat's routes and its `typing` client frame, for the composition root. `post_limit`
    limits posting per sender on `limiter`, `typing_limit` typing signals per user and chat;
    with `push` (Web Push on) a read closes the notifications of what it read.
    (Expired idempotency keys are removed by the core's retention loop.)"""
    service = ChatService(db, events, limiter, post_limit, max_members=max_members, push=push)
    live = ChatLive(db, signals, presence, limiter, typing_limit)
    return Feature(routes=ChatApi(service, live, authenticator).routes(), events=CHAT_EVENTS,
                   client_frames={"typing": live.typing_frame},
                   push_rules={CHAT_MESSAGE.name: chat_message_rule()})
