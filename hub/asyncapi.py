"""The AsyncAPI 3.0 document of the `/ws` protocol (docs/protocol.md §4-§5), built from the same
sources as the hub: the frame models below, the declared events' data models
(`hub.events.EventType`) and the close codes (`hub.close_codes.CloseCode`).

The frames' models describe what `hub.ws_frames` parses and writes (it builds them by hand, on
the hot path, without pydantic); tests/test_asyncapi.py checks every frame a real hub sends
against this document, and tests/test_protocol_doc.py the frame types against the protocol.
Operations are the hub's view: it `receive`s client frames and `send`s server frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from hub.close_codes import CloseCode
from hub.events import EVENT_NAME, EventType

REF = "#/components/schemas/{model}"
CHANNEL = "ws"
PATH = "/ws"


class AuthFrame(BaseModel):
    """First frame only; `last_event_id` and `epoch` only when resuming."""

    type: Literal["auth"]
    token: str = Field(description="an access token")
    last_event_id: Annotated[int, Field(ge=0)] | None = None
    epoch: str | None = None


class PingFrame(BaseModel):
    """Answered by `pong`."""

    type: Literal["ping"]


class RefreshFrame(BaseModel):
    """Moves the connection's expiry to the new token's; answered by `refreshed`."""

    type: Literal["refresh"]
    token: str = Field(description="a new access token of the same user")


class WelcomeFrame(BaseModel):
    """Once, after a good `auth` frame; `recovered` is true only for a resume served in full."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["welcome"]
    user_id: int
    epoch: str
    last_event_id: int
    recovered: bool


class EventFrame(BaseModel):
    """Each event of the user's stream, in id order, exactly once per connection."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["event"]
    id: int
    name: Annotated[str, Field(pattern=EVENT_NAME)]
    data: dict[str, Any]
    created_at: str


class PongFrame(BaseModel):
    """The answer to `ping`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["pong"]


class RefreshedFrame(BaseModel):
    """The answer to a good `refresh`: the connection's new expiry."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["refreshed"]
    expires_at: str


class ErrorFrame(BaseModel):
    """A client frame the hub does not understand; the connection stays open."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["error"]
    code: str
    detail: str


class TypingFrame(BaseModel):
    """The user is typing in a chat of theirs (§11): a `typing` signal to its other members, at
    most one per user and chat per CHAT_TYPING_INTERVAL seconds; `error` `forbidden` for a chat
    of others."""

    type: Literal["typing"]
    chat_id: int


class PresenceSignal(BaseModel):
    """A signal (§11, never stored, no id): another member of a chat came online or went
    offline."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["presence"]
    chat_id: int
    user_id: int
    online: bool


class TypingSignal(BaseModel):
    """A signal (§11, never stored, no id): another member of a chat is typing."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["typing"]
    chat_id: int
    user_id: int


CLIENT_FRAMES: tuple[type[BaseModel], ...] = (AuthFrame, PingFrame, RefreshFrame, TypingFrame)
SERVER_FRAMES: tuple[type[BaseModel], ...] = (WelcomeFrame, EventFrame, PongFrame, RefreshedFrame,
                                              ErrorFrame, PresenceSignal, TypingSignal)


def frame_type(model: type[BaseModel]) -> str:
    """The `type` a frame model fixes (its `Literal`)."""
    return str(model.model_json_schema()["properties"]["type"]["const"])


def build_asyncapi(event_types: Mapping[str, EventType[Any]], title: str,
                   version: str) -> dict[str, Any]:
    """The document: one channel (`/ws`), a message per frame type and one per declared event
    (an `event` frame whose `name` and `data` the declaration fixes)."""
    data_models = sorted({e.data for e in event_types.values()}, key=lambda m: m.__name__)
    frames = (*CLIENT_FRAMES, *SERVER_FRAMES)
    keys, schema = models_json_schema(
        [*((m, "validation") for m in frames), *((m, "serialization") for m in data_models)],
        ref_template=REF)
    schemas: dict[str, Any] = dict(schema.get("$defs", {}))
    messages: dict[str, Any] = {}
    keys_of: dict[type[BaseModel], str] = {}
    for model in frames:
        # a server frame of a client frame's type (`typing`) gets a key of its own
        key = keys_of[model] = (frame_type(model) if frame_type(model) not in messages
                                else f"{frame_type(model)}.signal")
        messages[key] = {
            "name": frame_type(model), "title": f"{frame_type(model)} frame",
            "summary": (model.__doc__ or "").strip(), "contentType": "application/json",
            "payload": {"$ref": keys[(model, "validation")]["$ref"]},
        }
    event_messages = []
    for name, event_type in event_types.items():
        data_ref = keys[(event_type.data, "serialization")]["$ref"]
        key = f"event.{name}"  # component keys allow letters, digits, ".", "-" and "_"
        event_messages.append(key)
        messages[key] = {
            "name": name, "title": f"{name} event",
            "summary": f"An `event` frame of `{name}`, sent to {event_type.recipients}.",
            "contentType": "application/json",
            "payload": {"allOf": [
                {"$ref": keys[(EventFrame, "validation")]["$ref"]},
                {"type": "object", "required": ["name", "data"],
                 "properties": {"name": {"const": name}, "data": {"$ref": data_ref}}},
            ]},
        }
    channel_ref = f"#/channels/{CHANNEL}"

    def operation(action: str, keys_: list[str], summary: str) -> dict[str, Any]:
        return {"action": action, "channel": {"$ref": channel_ref}, "summary": summary,
                "messages": [{"$ref": f"{channel_ref}/messages/{k}"} for k in keys_]}

    client = [keys_of[m] for m in CLIENT_FRAMES]
    server = [keys_of[m] for m in SERVER_FRAMES]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": title, "version": version,
            "description": "The hub's WebSocket protocol (docs/protocol.md §4) and the events "
                           "it delivers (§5). Every message is one JSON object, told apart by "
                           "`type`; an `event` frame's `data` has the shape its `name` fixes. "
                           "Close codes: `x-close-codes` of the channel.",
        },
        "defaultContentType": "application/json",
        "channels": {CHANNEL: {
            "address": PATH, "title": "The hub's WebSocket",
            "description": "Handshake, then `auth` first; the hub answers `welcome`, then "
                           "events and answers to client frames, until a close with one of "
                           "`x-close-codes`.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            "x-close-codes": [
                {"code": int(code), "name": code.name, "action": code.action.value,
                 "sent_by": code.sent_by.value, "meaning": code.meaning} for code in CloseCode],
        }},
        "operations": {
            "receiveClientFrames": operation("receive", client, "Frames a client sends"),
            "sendServerFrames": operation("send", server, "Frames the hub sends"),
            "sendEvents": operation("send", event_messages,
                                    "The declared events, each an `event` frame"),
        },
        "components": {"messages": messages, "schemas": schemas},
    }

