"""REST calls of the chat (protocol §6), blocks included, over `ChatService`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chat.events import ChatOut, MemberOut, MessageOut
from chat.live import ChatLive
from chat.service import ChatService
from hub import idempotency
from hub.http import api, link, only_json_type, read_json, read_path, read_query
from hub.identity import Authenticator, authenticate_request
from hub.responses import json_response
from hub.storable_text import StorableText

MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_TEXT = 4000
MAX_TITLE = 100
MAX_NEW_MEMBERS = 1000
# C0 and C1 controls and DEL: the bodies of regex character classes, shared by the check and
# the documented pattern. Text no database can store (lone surrogates, which no JSON Schema
# validator can see either) is StorableText's to refuse.
_TEXT_REFUSED = r"\x00-\x08\x0b-\x1f\x7f-\x9f"
_TITLE_REFUSED = r"\x00-\x1f\x7f-\x9f"


def trimmed_pattern(limit: int, refused: str) -> str:
    """The regex of what `_trimmed(limit, refused, ...)` accepts: no refused character, and
    1 to `limit` characters between the first and the last that `str.strip` keeps."""
    space, visible, any_ = rf"[^\S{refused}]", rf"[^\s{refused}]", rf"[^{refused}]"
    return rf"^{space}*{visible}(?:{any_}{{0,{limit - 2}}}{visible})?{space}*$"


def _trimmed(limit: int, refused: str, allowed: str) -> AfterValidator:
    refused_re = re.compile(f"[{refused}]")

    def check(value: str) -> str:
        # Refused anywhere, the ends included: trimming must not hide a control character.
        if refused_re.search(value):
            raise ValueError(f"must not contain control characters{allowed}")
        value = value.strip()
        if not value:
            raise ValueError("must not be empty or only whitespace")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters after trimming")
        return value

    return AfterValidator(check)


MessageText = Annotated[StorableText, _trimmed(MAX_TEXT, _TEXT_REFUSED, " other than newline and tab"),
                        WithJsonSchema({"type": "string",
                                        "pattern": trimmed_pattern(MAX_TEXT, _TEXT_REFUSED)})]
Title = Annotated[StorableText, _trimmed(MAX_TITLE, _TITLE_REFUSED, ""),
                  WithJsonSchema({"type": "string", "pattern": trimmed_pattern(MAX_TITLE, _TITLE_REFUSED)})]
ChatId = Annotated[int, Field(ge=1, le=MAX_INT32)]
UserId = Annotated[int, Field(strict=True, gt=0, le=MAX_INT32)]
MessageId = Annotated[int, Field(strict=True, gt=0, le=MAX_INT64)]


class NewChat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Title = Field(description="1 to 100 characters after trimming")
    member_ids: Annotated[list[UserId], Field(max_length=MAX_NEW_MEMBERS)] = Field(
        default_factory=list, description="other members; the creator always joins")


class NewMember(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId


class NewMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: MessageText = Field(description="1 to 4000 characters after trimming; no control "
                                          "characters other than newline and tab")


class ReadMark(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: MessageId


class MessagesQuery(BaseModel):
    # Absent means "from the newest"; there is no null on the wire.
    before_id: Annotated[int | None, Field(gt=0, le=MAX_INT64,
                                           json_schema_extra=only_json_type("integer"))] = None
    limit: Annotated[int, Field(ge=1, le=100)] = 50


class ChatPath(BaseModel):
    chat_id: ChatId


class UserPath(BaseModel):
    user_id: Annotated[int, Field(ge=1, le=MAX_INT32)]


class ChatList(BaseModel):
    items: list[ChatOut]


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_before_id: int | None


class NewBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId


class BlockList(BaseModel):
    items: list[MemberOut]


_CHAT = "/api/v1/chats/{chat_id:int}"
_FROM_CHAT = {"chat_id": "$response.body#/id"}
_FROM_MESSAGE = {"chat_id": "$response.body#/chat_id"}
CHAT_LINKS = {
    "GetChat": link("GET", _CHAT, _FROM_CHAT),
    "AddMember": link("POST", _CHAT + "/members", _FROM_CHAT),
    "PostMessage": link("POST", _CHAT + "/messages", _FROM_CHAT),
    "ListMessages": link("GET", _CHAT + "/messages", _FROM_CHAT),
}
MESSAGE_LINKS = {
    "MarkRead": link("POST", _CHAT + "/read", _FROM_MESSAGE, {"message_id": "$response.body#/id"}),
    "ListMessages": link("GET", _CHAT + "/messages", _FROM_MESSAGE),
}


class PresenceOut(BaseModel):
    online: list[int] = Field(description="members online, ascending")


class ChatApi:
    """Routes of §6 and §11. User tokens are checked by the `Authenticator` the composition root
    hands in."""

    def __init__(self, service: ChatService, live: ChatLive, authenticator: Authenticator) -> None:
        self._service = service
        self._live = live
        self._authenticator = authenticator

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/chats", self.create_chat, methods=["POST"]),
            Route("/api/v1/chats", self.list_chats, methods=["GET"]),
            Route(_CHAT, self.get_chat, methods=["GET"]),
            Route(_CHAT + "/members", self.add_member, methods=["POST"]),
            Route(_CHAT + "/members/me", self.leave, methods=["DELETE"]),
            Route(_CHAT + "/messages", self.post_message, methods=["POST"]),
            Route(_CHAT + "/messages", self.list_messages, methods=["GET"]),
            Route(_CHAT + "/read", self.mark_read, methods=["POST"]),
            Route(_CHAT + "/presence", self.presence, methods=["GET"]),
            Route(_CHAT + "/typing", self.typing, methods=["POST"]),
            Route("/api/v1/blocks", self.block, methods=["POST"]),
            Route("/api/v1/blocks", self.list_blocks, methods=["GET"]),
            Route("/api/v1/blocks/{user_id:int}", self.unblock, methods=["DELETE"]),
        ]

    @api(summary="Create a chat (the creator is a member); emits chat.created. 403 if a member "
                 "blocks the creator; 422 beyond CHAT_MAX_MEMBERS members", tag="chat",
         body=NewChat, response=ChatOut, status=201, auth="user", errors=(401, 403, 413, 415, 422),
         links=CHAT_LINKS)
    async def create_chat(self, request: Request) -> Response:
        user_id = await self._user(request)
        body = await read_json(request, NewChat)
        chat = await self._service.create_chat(user_id, body.title, body.member_ids)
        return json_response(chat, 201)

    @api(summary="The caller's chats, latest activity first, with unread counts", tag="chat",
         response=ChatList, auth="user", errors=(401,))
    async def list_chats(self, request: Request) -> Response:
        user_id = await self._user(request)
        return json_response({"items": await self._service.list_chats(user_id)})

    @api(summary="One chat of the caller", tag="chat", path=ChatPath, response=ChatOut,
         auth="user", errors=(401, 404))
    async def get_chat(self, request: Request) -> Response:
        user_id = await self._user(request)
        return json_response(await self._service.get_chat(user_id, _chat_id(request)))

    @api(summary="Add a member; emits chat.member_added to every member, the new one too. 403 "
                 "if they block the caller; 422 when the chat has CHAT_MAX_MEMBERS members",
         tag="chat", body=NewMember, path=ChatPath, response=ChatOut, status=201, auth="user",
         errors=(401, 403, 404, 409, 413, 415, 422))
    async def add_member(self, request: Request) -> Response:
        user_id = await self._user(request)
        chat_id = _chat_id(request)
        body = await read_json(request, NewMember)
        chat = await self._service.add_member(user_id, chat_id, body.user_id)
        self._live.forget(chat_id)
        return json_response(chat, 201)

    @api(summary="Leave a chat; emits chat.member_left to the remaining members. The leaver "
                 "gets nothing more of it; the last member to leave deletes it", tag="chat",
         path=ChatPath, status=204, auth="user", errors=(401, 404))
    async def leave(self, request: Request) -> Response:
        user_id = await self._user(request)
        chat_id = _chat_id(request)
        await self._service.leave(user_id, chat_id)
        self._live.forget(chat_id)
        return Response(status_code=204)

    @api(summary="Post a message; emits chat.message to every member. A retry with the same "
                 "Idempotency-Key within 24 h returns the first answer. 429 with Retry-After "
                 "beyond CHAT_POST_RATE per second (bursts of CHAT_POST_BURST)", tag="chat",
         body=NewMessage, path=ChatPath, response=MessageOut, status=201, auth="user",
         errors=(401, 404, 409, 413, 415, 422, 429),
         headers={idempotency.HEADER: idempotency.KEY_SCHEMA}, links=MESSAGE_LINKS)
    async def post_message(self, request: Request) -> Response:
        user_id = await self._user(request)
        chat_id = _chat_id(request)
        key = idempotency.read_key(request)
        body = await read_json(request, NewMessage)
        answer, replayed = await self._service.post_message(user_id, chat_id, body.text, key)
        return idempotency.response(answer, replayed)  # the publish API's replay marker too

    @api(summary="Messages of a chat, newest first, by keyset (before_id)", tag="chat",
         query=MessagesQuery, path=ChatPath, response=MessagePage, auth="user",
         errors=(401, 404, 422))
    async def list_messages(self, request: Request) -> Response:
        user_id = await self._user(request)
        chat_id = _chat_id(request)
        query = read_query(request, MessagesQuery)
        return json_response(
            await self._service.messages(user_id, chat_id, query.before_id, query.limit))

    @api(summary="Mark messages read up to message_id (only moves forward); emits chat.read "
                 "to the other members", tag="chat", body=ReadMark, path=ChatPath, status=204,
         auth="user", errors=(401, 404, 413, 415, 422))
    async def mark_read(self, request: Request) -> Response:
        user_id = await self._user(request)
        chat_id = _chat_id(request)
        body = await read_json(request, ReadMark)
        await self._service.mark_read(user_id, chat_id, body.message_id)
        return Response(status_code=204)

    @api(summary="The chat's members online now (a connection open on any process)", tag="chat",
         path=ChatPath, response=PresenceOut, auth="user", errors=(401, 404))
    async def presence(self, request: Request) -> Response:
        user_id = await self._user(request)
        return json_response({"online": await self._live.online(user_id, _chat_id(request))})

    @api(summary="Tell the other members the caller is typing (a typing signal, never stored); "
                 "at most one per user and chat per CHAT_TYPING_INTERVAL seconds is forwarded, "
                 "the rest are dropped", tag="chat", path=ChatPath, status=204, auth="user",
         errors=(401, 404))
    async def typing(self, request: Request) -> Response:
        user_id = await self._user(request)
        await self._live.typing(user_id, _chat_id(request))
        return Response(status_code=204)

    @api(summary="Block a user (again: no change): they cannot add the caller to a chat. 422 "
                 "for oneself or an unknown user", tag="chat", body=NewBlock, status=204,
         auth="user", errors=(401, 413, 415, 422))
    async def block(self, request: Request) -> Response:
        user_id = await self._user(request)
        body = await read_json(request, NewBlock)
        await self._service.block(user_id, body.user_id)
        return Response(status_code=204)

    @api(summary="The users the caller blocks, in user-id order", tag="chat", response=BlockList,
         auth="user", errors=(401,))
    async def list_blocks(self, request: Request) -> Response:
        user_id = await self._user(request)
        return json_response({"items": await self._service.blocks(user_id)})

    @api(summary="Unblock a user (not blocked: no change); 404 for an unknown user", tag="chat",
         path=UserPath, status=204, auth="user", errors=(401, 404))
    async def unblock(self, request: Request) -> Response:
        user_id = await self._user(request)
        blocked_id = read_path(request, UserPath).user_id
        await self._service.unblock(user_id, blocked_id)
        return Response(status_code=204)

    async def _user(self, request: Request) -> int:
        return (await authenticate_request(request, self._authenticator)).user_id


def _chat_id(request: Request) -> int:
    return read_path(request, ChatPath).chat_id


