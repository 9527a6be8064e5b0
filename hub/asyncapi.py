"""The AsyncAPI 3.0 document of the `/ws` protocol (docs/protocol.md §4-§5) and of the event
stream over HTTP (§12), built from the same sources as the hub: the frame models below, the
declared events' data models (`hub.events.EventType`) and the close codes
(`hub.close_codes.CloseCode`).

The frames' models describe what `hub.ws_frames` parses and writes (it builds them by hand, on
the hot path, without pydantic); tests/test_asyncapi.py checks every frame a real hub sends
against this document, and tests/test_protocol_doc.py the frame types against the protocol.
Operations are the hub's view: it `receive`s client frames and `send`s server frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from hub.close_codes import CloseCode
from hub.events import EVENT_NAME, EventType

REF = "#/components/schemas/{model}"
CHANNEL = "ws"
PATH = "/ws"
STREAM_CHANNEL = "stream"
STREAM_PATH = "/api/v1/stream"


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


class StreamEvent(BaseModel):
    """An event of the stream (§12): the event object of §1, on one `data:` line."""

    model_config = ConfigDict(extra="forbid")
    id: int
    name: Annotated[str, Field(pattern=EVENT_NAME)]
    data: dict[str, Any]
    created_at: str


class StreamEnd(BaseModel):
    """The stream's last message (`event: error`): why the hub ended it, and what to do."""

    model_config = ConfigDict(extra="forbid")
    code: Literal["token_expired", "slow_consumer", "server_restarting", "session_revoked",
                  "history_gone", "internal"]
    detail: str


CLIENT_FRAMES: tuple[type[BaseModel], ...] = (AuthFrame, PingFrame, RefreshFrame, TypingFrame)
SERVER_FRAMES: tuple[type[BaseModel], ...] = (WelcomeFrame, EventFrame, PongFrame, RefreshedFrame,
                                              ErrorFrame, PresenceSignal, TypingSignal)


STREAM_ENDS: tuple[str, ...] = get_args(StreamEnd.model_fields["code"].annotation)
SSE_ID = {"type": "string", "pattern": "^.+:[0-9]+$", "description": "<epoch>:<event id>"}


def frame_type(model: type[BaseModel]) -> str:
    """The `type` a frame model fixes (its `Literal`)."""
    return str(model.model_json_schema()["properties"]["type"]["const"])


def build_asyncapi(event_types: Mapping[str, EventType[Any]], title: str,
                   version: str) -> dict[str, Any]:
    """The document: one channel (`/ws`), a message per frame type and one per declared event
    (an `event` frame whose `name` and `data` the declaration fixes)."""
    data_models = sorted({e.data for e in event_types.values()}, key=lambda m: m.__name__)
    frames = (*CLIENT_FRAMES, *SERVER_FRAMES)
    models: tuple[type[BaseModel], ...] = (*frames, StreamEvent, StreamEnd)
    keys, schema = models_json_schema(
        [*((m, "validation") for m in models),
         *((m, "serialization") for m in data_models)],
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
    ws_keys = list(messages)
    stream_keys = _stream_messages(messages, keys, event_types)

    def operation(action: str, keys_: list[str], summary: str,
                  channel: str = CHANNEL) -> dict[str, Any]:
        channel_ref = f"#/channels/{channel}"
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
                           "Close codes: `x-close-codes` of the channel. The same stream over "
                           "HTTP as Server-Sent Events (§12): the `stream` channel, each "
                           "message's `headers` being its SSE fields and its payload the JSON "
                           "of its `data:` line.",
        },
        "defaultContentType": "application/json",
        "channels": {CHANNEL: {
            "address": PATH, "title": "The hub's WebSocket",
            "description": "Handshake, then `auth` first; the hub answers `welcome`, then "
                           "events and answers to client frames, until a close with one of "
                           "`x-close-codes`.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in ws_keys},
            "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            "x-close-codes": [
                {"code": int(code), "name": code.name, "action": code.action.value,
                 "sent_by": code.sent_by.value, "meaning": code.meaning} for code in CloseCode],
        }, STREAM_CHANNEL: {
            "address": STREAM_PATH, "title": "The event stream over HTTP (Server-Sent Events)",
            "description": "GET with `Authorization: Bearer` or `?ticket=` (POST "
                           "/api/v1/stream/tickets), resuming from `Last-Event-ID: <epoch>:<id>` "
                           "or `?last_event_id=&epoch=`; a `text/event-stream` answer: `welcome`, "
                           "the replay, live events (with an `id`), signals (without), a `: ping` "
                           "comment every WS_PING_INTERVAL seconds, and last an `error` whose "
                           "`code` says why the hub ended the stream.",
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in stream_keys},
        }},
        "operations": {
            "receiveClientFrames": operation("receive", client, "Frames a client sends"),
            "sendServerFrames": operation("send", server, "Frames the hub sends"),
            "sendEvents": operation("send", event_messages,
                                    "The declared events, each an `event` frame"),
            "sendStreamMessages": {
                **operation("send", stream_keys, "The messages of an event stream, in SSE",
                            STREAM_CHANNEL),
                "bindings": {"http": {"method": "GET", "bindingVersion": "0.3.0"}},
            },
        },
        "components": {"messages": messages, "schemas": schemas},
    }



def _stream_messages(messages: dict[str, Any], keys: Mapping[Any, dict[str, Any]],
                     event_types: Mapping[str, EventType[Any]]) -> list[str]:
    """The stream's messages (§12), added to `messages` as `stream.*`: the welcome, an event of
    any name and of each declared one, the signals, the final `error`. Their `headers` are the
    SSE fields (`event`, and `id` for the welcome and events only)."""

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": keys[(model, "validation")]["$ref"]}

    def sse(event: dict[str, Any], with_id: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"type": "object", "properties": {"event": event},
                                  "required": ["event", "id"] if with_id else ["event"]}
        if with_id:
            fields["properties"]["id"] = SSE_ID
        else:
            fields["not"] = {"required": ["id"]}
        return fields

    def add(key: str, name: str, summary: str, headers: dict[str, Any],
            payload: dict[str, Any]) -> None:
        messages[key] = {"name": name, "title": f"{name} (event stream)", "summary": summary,
                         "contentType": "application/json", "headers": headers,
                         "payload": payload}

    add("stream.welcome", "welcome", "First: the welcome object of /ws; its id is the position "
        "the stream continues after.", sse({"const": "welcome"}, True), ref(WelcomeFrame))
    add("stream.event", "event", "An event: `event:` is its name, `id:` <epoch>:<id>.",
        sse({"type": "string", "pattern": EVENT_NAME}, True), ref(StreamEvent))
    for name, event_type in event_types.items():
        data_ref = keys[(event_type.data, "serialization")]["$ref"]
        add(f"stream.event.{name}", name, f"The event `{name}`, sent to {event_type.recipients}.",
            sse({"const": name}, True), {"allOf": [ref(StreamEvent), {
                "type": "object", "required": ["name", "data"],
                "properties": {"name": {"const": name}, "data": {"$ref": data_ref}}}]})
    for signal in (PresenceSignal, TypingSignal):
        kind = frame_type(signal)
        add(f"stream.{kind}", kind, "A signal (§11) without an id: never replayed.",
            sse({"const": kind}, False), ref(signal))
    add("stream.error", "error", "Last: why the hub ended the stream; the connection closes.",
        sse({"const": "error"}, False), ref(StreamEnd))
    return [key for key in messages if key.startswith("stream.")]
