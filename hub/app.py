"""The composition root: the one place that knows every module and wires them together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute

from auth.passwords import Passwords
from auth.routes import AuthApi
from auth.service import Accounts
from auth.sessions import CHECK_SECONDS, RevocationWatch
from auth.tokens import TokenCodec
from chat import chat_feature
from hub import migrate
from hub.asyncapi import build_asyncapi
from hub.broker import Broker
from hub.broker_memory import MemoryBroker
from hub.db import Database
from hub.errors import (
    ApiError,
    api_error_handler,
    client_disconnect_handler,
    database_error_handler,
    http_exception_handler,
    internal_error_handler,
    unreachable_handler,
)
from hub.event_stream import EventStreamApi
from hub.events import EventBus, declared
from hub.feature import Feature, Loop
from hub.lean_routes import ErrorHandler, LeanRoutes
from hub.metrics import HttpMetricsMiddleware, Metrics
from hub.openapi import build_openapi
from hub.ops import OpsApi
from hub.presence import MemoryPresence, Presence, PresenceStore
from hub.publish_api import PublishApi
from hub.publisher import Publisher
from hub.push_api import PushApi
from hub.push_crypto import VapidSigner, load_vapid_key, public_key_b64
from hub.push_decider import PushDecider
from hub.push_sender import PushSender
from hub.ratelimit import Limit, auth_attempts, make_rate_limiter
from hub.registry import Registry
from hub.retention import Retention
from hub.settings import Settings
from hub.signals import Signals
from hub.stream_tickets import make_ticket_store
from hub.supervise import supervise
from hub.web import WebFront
from hub.ws import WebSocketApi
from parser_bridge.feature import parser_bridge_feature

log = logging.getLogger("hub")
VERSION = "0.1.0"


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url is None:
        return MemoryBroker()
    if settings.redis_cluster:
        from hub.broker_redis_cluster import RedisClusterBroker

        return RedisClusterBroker(settings.redis_url)
    from hub.broker_redis import RedisBroker

    return RedisBroker(settings.redis_url)


def make_presence_store(settings: Settings) -> PresenceStore:
    if settings.redis_url is None or not settings.presence:  # off: an empty store, never fed
        return MemoryPresence()
    from hub.presence_redis import RedisPresence

    return RedisPresence(settings.redis_url, settings.redis_channel_prefix, settings.presence_ttl,
                         cluster=settings.redis_cluster)


def create_app(settings: Settings) -> Starlette:
    """Build the hub from validated settings. Nothing connects until the lifespan starts."""
    db = Database(settings.database_url)
    metrics = Metrics(settings.tls_certificate_file)
    broker = make_broker(settings)
    publisher = Publisher(db, broker, metrics, settings.redis_channel_prefix)
    presence = Presence(make_presence_store(settings), metrics, settings.presence_offline_grace)
    registry = Registry(broker, metrics, settings.redis_channel_prefix,
                        settings.ws_max_connections_per_user,
                        presence if settings.presence else None)
    signals = Signals(broker, metrics, settings.redis_channel_prefix, registry.signal_many)
    events = EventBus(db, publisher.publish)
    limiter = make_rate_limiter(metrics, settings.redis_url, settings.redis_channel_prefix,
                                cluster=settings.redis_cluster)
    revocations = RevocationWatch(db, settings.access_token_ttl, registry.close_sessions)
    accounts = Accounts(
        db,
        TokenCodec(settings.jwt_secret, settings.jwt_algorithm,
                   settings.access_token_ttl, settings.refresh_token_ttl),
        Passwords(),
        revocations,
    )
    websockets = WebSocketApi(settings, db, registry, accounts, metrics)
    publish_api = PublishApi(settings, db, events, accounts)
    tickets = make_ticket_store(settings.stream_ticket_ttl, settings.redis_url,
                                settings.redis_channel_prefix, cluster=settings.redis_cluster)
    event_stream = EventStreamApi(settings, db, registry, accounts, metrics, websockets.reads,
                                  tickets, limiter, auth_attempts(settings.auth_rate_limit),
                                  revocations.is_revoked)
    features: list[Feature] = [
        Feature(loops=(
            Loop("publish watermarks", publisher.flush_watermarks, 0.5),
            Loop("relay", publisher.relay, 1.0),
            Loop("retention", Retention(db, metrics, settings.stream_retention_events,
                                        settings.stream_retention_seconds).step, 60.0),
            Loop("session revocations", revocations.step, CHECK_SECONDS),
        ) + ((Loop("presence heartbeat", presence.step, settings.presence_heartbeat),)
             if settings.presence else ())),
        Feature(routes=WebFront().routes()),
        Feature(routes=publish_api.routes()),
        Feature(routes=event_stream.routes()),
        Feature(routes=AuthApi(
            accounts, db, limiter, auth_attempts(settings.auth_rate_limit),
            Limit.per("login_failures", settings.login_failure_limit, settings.login_failure_window),
        ).routes()),
        parser_bridge_feature(settings, db, events, accounts),
        chat_feature(db, events, signals, presence, accounts, limiter,
                     Limit("chat_post", settings.chat_post_rate, settings.chat_post_burst),
                     Limit("chat_typing", 1.0 / settings.chat_typing_interval, 1),
                     max_members=settings.chat_max_members, push=settings.push_enabled),
    ]
    push = web_push(settings, db, metrics, registry, accounts, features)
    features.append(push.feature)
    if push.decider is not None:
        events.on_commit.append(push.decider.committed)
    for feature in features:
        websockets.client_frames.update(feature.client_frames)
    routes: list[BaseRoute] = [route for feature in features for route in feature.routes]
    event_types = declared(event for feature in features for event in feature.events)
    ops = OpsApi(db, broker, metrics, lambda: build_openapi(routes, "Notification hub", VERSION),
                 lambda: build_asyncapi(event_types, "Notification hub", VERSION))
    routes.extend(ops.routes())
    loops = [loop for feature in features for loop in feature.loops]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.jwt_secret_generated:
            log.warning("JWT_SECRET is not set: dev mode generated a random one, so tokens "
                        "will not survive a restart; set JWT_SECRET to keep them")
        async with contextlib.AsyncExitStack() as stack:
            db.open()
            stack.push_async_callback(db.close)
            stack.push_async_callback(events.close)
            if settings.uses_sqlite:
                await migrate.upgrade(db)
            await broker.open(registry.dispatch, registry.resync, registry.resync_channels)
            stack.push_async_callback(limiter.close)
            stack.push_async_callback(tickets.close)
            stack.push_async_callback(broker.close)
            stack.push_async_callback(publisher.close)
            if push.sender is not None:
                push.sender.open()
                stack.push_async_callback(push.sender.close)
            await presence.start()  # in the deployment before the first socket arrives
            stack.push_async_callback(presence.close)
            tasks = [asyncio.create_task(supervise(loop.name, loop.step, interval=loop.interval),
                                         name=loop.name) for loop in loops]
            stack.push_async_callback(_cancel, tasks)
            yield

    handlers: dict[Any, ErrorHandler] = {
        ApiError: api_error_handler,
        HTTPException: http_exception_handler,
        ClientDisconnect: client_disconnect_handler,
        DBAPIError: database_error_handler,
        OSError: unreachable_handler,
        Exception: internal_error_handler,
    }
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(LeanRoutes, routes=publish_api.lean_routes(), handlers=handlers,
                               metrics=metrics),
                    Middleware(HttpMetricsMiddleware, metrics=metrics)],
        exception_handlers=handlers,
    )
    app.state.websocket_protocol = websockets.protocol  # uvicorn's `ws` option for this app
    app.state.event_types = event_types  # every declared event by name, for tests and tools
    return app


@dataclass(frozen=True)
class WebPush:
    feature: Feature
    sender: PushSender | None
    decider: PushDecider | None = None


def web_push(settings: Settings, db: Database, metrics: Metrics, registry: Registry,
             accounts: Accounts, features: list[Feature]) -> WebPush:
    """Protocol §13: the routes always (they answer 404 when push is off), the loops only with a
    VAPID key. The features' push rules say how their events read and when they count as seen."""
    key = load_vapid_key(settings.vapid_private_key) if settings.vapid_private_key else None
    api = PushApi(db, accounts, public_key_b64(key) if key else None,
                  settings.push_max_subscriptions, settings.push_allow_private)
    if key is None or settings.vapid_subject is None:
        return WebPush(Feature(routes=api.routes()), None)
    rules = {name: rule for feature in features for name, rule in feature.push_rules.items()}
    sender = PushSender(db, metrics, VapidSigner(key, settings.vapid_subject),
                        settings.push_max_in_flight, settings.push_allow_private)
    decider = PushDecider(db, metrics, registry.delivered_marks, rules, settings.push_events,
                          settings.push_delay, settings.push_ttl, decided=sender.wake)
    return WebPush(Feature(routes=api.routes(), loops=(
        Loop("push delivered marks", decider.flush_delivered, 0.5),
        Loop("push decisions", decider.step, 0.05),  # the step itself waits up to DECIDE_SECONDS
        Loop("push sends", sender.step, 0.05),  # the step itself waits up to IDLE_SECONDS
    )), sender, decider)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
