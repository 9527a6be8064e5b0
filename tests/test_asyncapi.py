"""/api/asyncapi.json: an AsyncAPI 3.0 document of the WebSocket and of the event stream over
HTTP built from the code's own sources (frame models, declared events, close codes), valid in
structure, complete, and true: every frame and SSE message a real hub sends validates against
the message the document gives for it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator, Draft202012Validator

from hub.app import VERSION, create_app
from hub.asyncapi import STREAM_ENDS, build_asyncapi
from hub.close_codes import CloseCode
from hub.connection import (
    AuthEnded,
    ConnectionEnded,
    SessionRevoked,
    SlowConsumer,
    StreamGap,
    TokenExpired,
)
from hub.settings import Settings
from hub.sse import ending
from tests.conftest import RunningHub, register
from tests.sseutil import Message, open_stream
from tests.wsutil import connect, mint, publish_to

ROOT = Path(__file__).resolve().parent.parent
KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")  # AsyncAPI 3.0: the keys of components' maps


@pytest.fixture(scope="module")
def hub(module_hub: RunningHub) -> RunningHub:
    return module_hub


def _built() -> tuple[dict[str, Any], dict[str, Any]]:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", jwt_secret="k" * 32))
    return build_asyncapi(app.state.event_types, "Notification hub", VERSION), dict(app.state.event_types)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _doc_frame_types(heading: str) -> set[str]:
    """The first cells of the table under `### heading` in docs/protocol.md."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split(f"\n### {heading}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\|\s*`([a-z_]+)`\s*\|", section, re.MULTILINE))


def test_the_document_has_the_structure_of_asyncapi_3() -> None:
    document, _ = _built()
    assert document["asyncapi"] == "3.0.0"
    assert set(document) <= {"asyncapi", "id", "info", "servers", "defaultContentType", "channels",
                             "operations", "components"}
    assert isinstance(document["info"]["title"], str) and isinstance(document["info"]["version"], str)
    for ref in _refs(document):
        _resolve(document, ref)
    for name, channel in document["channels"].items():
        assert KEY.match(name) and channel["address"].startswith("/")
        for message in channel["messages"].values():
            assert set(message) == {"$ref"} and message["$ref"].startswith("#/components/messages/")
    for name, operation in document["operations"].items():
        assert KEY.match(name) and operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/")
        for message in operation["messages"]:  # AsyncAPI 3: an operation names its channel's messages
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
    for kind in ("messages", "schemas"):
        for key in document["components"][kind]:
            assert KEY.match(key), f"components.{kind} key {key!r}"
    for key, message in document["components"]["messages"].items():
        assert message["contentType"] == "application/json" and message["payload"], key
    for schema in document["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)  # AsyncAPI schemas are a superset of draft 7


def test_every_frame_type_event_and_close_code_appears() -> None:
    document, event_types = _built()
    messages = document["components"]["messages"]
    operations = document["operations"]

    def types_of(operation: str) -> set[str]:
        return {messages[ref["$ref"].rsplit("/", 1)[1]]["name"] for ref in operations[operation]["messages"]}

    assert types_of("receiveClientFrames") == _doc_frame_types("Client frames")
    assert types_of("sendServerFrames") == _doc_frame_types("Server frames")
    assert types_of("sendEvents") == set(event_types) >= {"chat.message", "parse.completed"}
    for name, event_type in event_types.items():
        payload = messages[f"event.{name}"]["payload"]["allOf"][1]["properties"]
        assert payload["name"] == {"const": name}
        data = _resolve(document, payload["data"]["$ref"])
        assert set(data["properties"]) == set(event_type.data.model_fields), name
    close_codes = document["channels"]["ws"]["x-close-codes"]
    assert [(c["code"], c["name"], c["action"]) for c in close_codes] == \
        [(int(code), code.name, code.action.value) for code in CloseCode]


def _validator(document: dict[str, Any], message: str) -> Draft202012Validator:
    payload = document["components"]["messages"][message]["payload"]
    # the payload's references point into the document: validate with the document as root
    return Draft202012Validator({**payload, "components": document["components"]})


async def test_frames_a_real_hub_sends_are_what_the_document_says(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        response = await hub.http.get("/api/asyncapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document == _built()[0]

    alice, bob = await register(hub.http), await register(hub.http)
    sock = await connect(hub.ws_url, alice.access_token)
    try:
        frames: list[tuple[str, dict[str, Any]]] = [("welcome", sock.welcome)]
        client_frames = [{"type": "auth", "token": "t", "last_event_id": 3, "epoch": "e"},
                         {"type": "ping"}, {"type": "refresh", "token": "t"}]
        for frame in client_frames:
            _validator(document, frame["type"]).validate(frame)
        await sock.send({"type": "ping"})
        frames.append(("pong", await sock.next()))
        await sock.send({"type": "refresh", "token": mint(hub.settings, alice.id, ttl=600)})
        frames.append(("refreshed", await sock.next()))
        await sock.send({"type": "no such frame"})
        frames.append(("error", await sock.next()))
        async with asyncio.timeout(10):
            chat = await hub.http.post("/api/v1/chats", headers=alice.headers,
                                       json={"title": "specs", "member_ids": [bob.id]})
            assert chat.status_code == 201
            posted = await hub.http.post(f"/api/v1/chats/{chat.json()['id']}/messages",
                                         headers=alice.headers, json={"text": "hi"})
            assert posted.status_code == 201
        frames.append(("event.chat.created", await sock.next()))
        frames.append(("event.chat.message", await sock.next()))
        await publish_to(hub, [alice.id], "order.shipped", {"order": 1234})
        frames.append(("event", await sock.next()))  # free-form: the generic event frame
    finally:
        await sock.close()
    for message, frame in frames:
        _validator(document, message).validate(frame)
    # and a frame is told apart: a chat.message frame is no chat.created
    assert not _validator(document, "event.chat.created").is_valid(frames[-2][1])


def test_the_stream_channel_has_every_message_and_end_code() -> None:
    document, event_types = _built()
    messages = document["components"]["messages"]
    operation = document["operations"]["sendStreamMessages"]
    assert operation["channel"] == {"$ref": "#/channels/stream"}
    assert document["channels"]["stream"]["address"] == "/api/v1/stream"
    keys = {ref["$ref"].rsplit("/", 1)[1] for ref in operation["messages"]}
    assert keys == set(document["channels"]["stream"]["messages"])
    assert keys == {"stream.welcome", "stream.event", "stream.presence", "stream.typing",
                    "stream.error"} | {f"stream.event.{name}" for name in event_types}
    assert not keys & set(document["channels"]["ws"]["messages"])
    text = (ROOT / "docs" / "protocol.md").read_text()
    section = text.split("\n## 12.", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\s*\|\s*`([a-z_]+)`\s*\|", section, re.MULTILINE))
    assert set(STREAM_ENDS) == documented
    reasons = (SlowConsumer(""), TokenExpired(""), SessionRevoked(""), AuthEnded(""), StreamGap(""),
               ConnectionEnded(""))
    assert {ending(reason)[0] for reason in reasons} | {"server_restarting"} == set(STREAM_ENDS)
    assert messages["stream.error"]["headers"]["not"] == {"required": ["id"]}


async def test_stream_messages_a_real_hub_sends_are_what_the_document_says(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        document = (await hub.http.get("/api/asyncapi.json")).json()
    messages = document["components"]["messages"]

    def check(key: str, message: Message) -> None:
        headers = {"event": message.event, **({"id": message.id} if message.id else {})}
        Draft202012Validator(messages[key]["headers"]).validate(headers)
        _validator(document, key).validate(message.data)

    alice, bob = await register(hub.http), await register(hub.http)
    async with open_stream(hub.http, alice.access_token) as stream:
        check("stream.welcome", Message("welcome", stream.welcome, stream.welcome_id))
        async with asyncio.timeout(10):
            chat = await hub.http.post("/api/v1/chats", headers=alice.headers,
                                       json={"title": "specs", "member_ids": [bob.id]})
            await hub.http.post(f"/api/v1/chats/{chat.json()['id']}/messages",
                                headers=alice.headers, json={"text": "hi"})
        await publish_to(hub, [alice.id], "order.shipped", {"order": 1234})
        created, message, shipped = await stream.events(3)
        check("stream.event.chat.created", created)
        check("stream.event.chat.message", message)
        check("stream.event", shipped)
        assert not _validator(document, "stream.event.chat.created").is_valid(message.data)
        assert (await hub.http.post("/api/v1/auth/logout", headers=alice.headers)).status_code == 204
        check("stream.error", await stream.ended())
