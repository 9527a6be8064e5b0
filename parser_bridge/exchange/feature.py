"""The exchange feature as the composition root sees it: the routes of protocol §8 and the loop
that hands requests to the exchange service (`python -m parser_bridge.exchange_service`, at
EXCHANGE_SERVICE_URL); without that URL the feature answers 503 and runs no loop."""

from __future__ import annotations

from typing import Any

from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature, Loop
from hub.identity import Authenticator
from hub.push_rules import Notice, PushRule
from hub.settings import Settings
from parser_bridge.exchange.api import ExchangeApi
from parser_bridge.exchange.events import EXCHANGE_RESULT
from parser_bridge.exchange.requests import ExchangeRequests


def exchange_feature(settings: Settings, db: Database, events: EventBus,
                     authenticator: Authenticator) -> Feature:
    """Build the feature; nothing connects until the app's loops start."""
    exchange = ExchangeRequests(db, events, settings.exchange_service_url,
                                settings.exchange_service_token, settings.exchange_retry_window)
    return Feature(
        push_rules={EXCHANGE_RESULT.name: PushRule(describe=describe_exchange)},
        routes=ExchangeApi(exchange, authenticator, settings.exchange_service_token).routes(),
        loops=[Loop("exchange forwarding", exchange.forward_due, 0.05)] if exchange.offered else [],
        events=(EXCHANGE_RESULT,),
    )


def describe_exchange(data: dict[str, Any]) -> Notice:
    """An `exchange.result` push: the total in roubles, or why it failed; one topic per request."""
    topic = f"exchange-{int(data['request_id'])}"
    if data["status"] == "completed":
        return Notice("Exchange completed", f"Total: {data['total_rub']} RUB", topic)
    return Notice("Exchange failed", str(data.get("error") or "failed"), topic)
