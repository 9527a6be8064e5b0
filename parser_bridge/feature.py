"""The parser bridge as the composition root sees it: the parse feature (§7) and the exchange
feature (§8) as one `Feature`, so `create_app` wires the package in one line."""

from __future__ import annotations

from hub.db import Database
from hub.events import EventBus
from hub.feature import Feature
from hub.identity import Authenticator
from hub.settings import Settings
from parser_bridge.exchange.feature import exchange_feature
from parser_bridge.parse.feature import parse_feature


def parser_bridge_feature(settings: Settings, db: Database, events: EventBus,
                          authenticator: Authenticator) -> Feature:
    """Build both features; nothing connects until the app's loops start."""
    parts = (parse_feature(settings, db, events, authenticator),
             exchange_feature(settings, db, events, authenticator))
    return Feature(routes=[route for part in parts for route in part.routes],
                   loops=[loop for part in parts for loop in part.loops],
                   events=[event for part in parts for event in part.events],
                   push_rules={name: rule for part in parts for name, rule in part.push_rules.items()})
