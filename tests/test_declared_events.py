"""Declared events (hub.events.EventType): each event's name and data shape are declared once,
next to the feature that emits it; the emitters use the declarations, the browser client repeats
the names (compared here), and nothing but the publish API writes a free-form event. Pure and
fast: the app is built, never started."""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from chat.events import CHAT_MESSAGE, ChatOut, Membership, MessageOut
from hub.app import create_app
from hub.events import Event, EventType, declared
from hub.settings import Settings
from parser_bridge.exchange.events import EXCHANGE_RESULT, ExchangeResult, SubtotalOut

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("auth", "chat", "parser_bridge")
# A JS string that is an event name: lower case words joined by a dot ("chat.message").
JS_EVENT_NAME = re.compile(r'(?:\.on\(|\.name === )"([a-z][a-z0-9_]*\.[a-z0-9_.:-]+)"')
# Declared events the browser page deliberately ignores (for other clients only); empty today.
NOT_SHOWN_BY_THE_PAGE: frozenset[str] = frozenset()


def _event_types() -> dict[str, EventType[Any]]:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", jwt_secret="k" * 32))
    return dict(app.state.event_types)


def test_the_app_collects_every_feature_declaration() -> None:
    assert set(_event_types()) == {
        "chat.created", "chat.member_added", "chat.message", "chat.read", "chat.member_left",
        "parse.completed", "exchange.result"}


def test_the_browser_client_uses_exactly_the_declared_names() -> None:
    """hub/static/*.js repeats the event names it listens to; they must be declared ones, and
    the page handles every declared event but those listed in NOT_SHOWN_BY_THE_PAGE."""
    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "hub" / "static").glob("*.js")):
        for name in JS_EVENT_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(path.name)
    assert {"chat.message", "parse.completed"} <= set(used), \
        "the JS names are no longer found where this test looks"
    declared_names = set(_event_types())
    assert set(used) - declared_names == set(), f"the JS listens to undeclared events: {used}"
    assert declared_names - set(used) == NOT_SHOWN_BY_THE_PAGE, \
        "declared events the page does not handle: handle them or list them in NOT_SHOWN_BY_THE_PAGE"


def test_features_emit_only_declared_events() -> None:
    """No feature builds an `Event` itself (`Event(...)`, `Event.published(...)`): it calls a
    declaration, so the name and the data's model come from one place."""
    offenders = []
    for package in FEATURES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                if (isinstance(func, ast.Name) and func.id == "Event") or (
                        isinstance(func, ast.Attribute) and func.attr == "published"
                        and isinstance(func.value, ast.Name) and func.value.id == "Event"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_declaration_takes_only_its_own_model() -> None:
    membership = Membership(chat_id=1, user_id=2)
    with pytest.raises(TypeError, match=r"chat\.message takes MessageOut, not Membership"):
        CHAT_MESSAGE(membership)  # type: ignore[arg-type]  # what mypy refuses, refused at run time too
    with pytest.raises(ValidationError):
        MessageOut.model_validate({"id": 1, "chat_id": 2})


def test_data_is_encoded_once_as_the_model_dumps_it() -> None:
    message = MessageOut(id=120, chat_id=3, sender_id=7, sender_username="alice", text="hi ✓",
                         created_at="2026-11-22T10:00:00.123Z")
    event = CHAT_MESSAGE(message)
    assert event == Event("chat.message", event.data_json)
    assert orjson.loads(event.data_json) == message.model_dump()


def test_money_is_an_exact_json_number() -> None:
    result = ExchangeResult(
        request_id=1, status="completed", error=None, total_rub=Decimal("123456789012345678901234.57"),
        breakdown=[SubtotalOut(denomination_id=5, subtotal_rub=Decimal("0.10"))])
    data_json = EXCHANGE_RESULT(result).data_json
    assert b'"total_rub":123456789012345678901234.57' in data_json
    assert b'"subtotal_rub":0.10' in data_json


def test_names_are_checked_and_declared_once() -> None:
    class Nothing(BaseModel):
        pass

    with pytest.raises(ValueError, match="does not match"):
        EventType("Chat Message", Nothing, "nobody")
    with pytest.raises(ValueError, match="declared twice"):
        declared([EventType("x.y", Nothing, "a"), EventType("x.y", ChatOut, "b")])
