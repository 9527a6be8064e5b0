"""Server publish API and stream history (protocol §9)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub import idempotency, streams
from hub.db import Database
from hub.errors import Invalid, NotFound, TooLarge
from hub.events import EVENT_NAME, Event, EventBus, Transaction
from hub.http import api, check_service_token, parse_json, read_query, require_json_content_type
from hub.identity import Authenticator, authenticate_request
from hub.lean_routes import Answer, LeanHandler, LeanRequest, as_response
from hub.settings import Settings
from hub.storable_text import StorableJsonObject
from hub.streams import StoredEvent
from hub.users import existing_user_ids

MAX_DATA_BYTES = 64 * 1024
MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT
IDEMPOTENCY_HEADER = idempotency.HEADER.lower().encode()
REPLAYED = ((idempotency.REPLAYED[0].encode(), idempotency.REPLAYED[1].encode()),)


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_ids: Annotated[list[Annotated[int, Field(gt=0, lt=2**31)]], Field(min_length=1, max_length=10_000)]
    name: Annotated[str, Field(pattern=EVENT_NAME)]
    data: StorableJsonObject = Field(default_factory=dict)


class PublishOut(BaseModel):
    events: dict[str, int]


class EventOut(BaseModel):
    id: int
    name: str
    data: dict[str, Any]
    created_at: str


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    after: Annotated[int, Field(ge=0, le=MAX_EVENT_ID)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 100


class EventsOut(BaseModel):
    epoch: str
    items: list[EventOut]
    last_event_id: int


class PublishApi:
    def __init__(self, settings: Settings, db: Database, events: EventBus,
                 authenticator: Authenticator) -> None:
        self._api_key = settings.hub_api_key
        self._db = db
        self._events = events
        self._auth = authenticator

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/publish", self.publish, methods=["POST"]),
            Route("/api/v1/events", self.history, methods=["GET"]),
        ]

    @api(summary="Publish an event to users (durable, ordered per user)", tag="publish",
         body=PublishBody, response=PublishOut, status=202, auth="hub_api_key",
         headers={idempotency.HEADER: idempotency.KEY_SCHEMA}, errors=(403, 409, 413, 415, 422))
    async def publish(self, request: Request) -> Response:
        return as_response(await self.answer_publish(LeanRequest(request.scope, request.receive)))

    def lean_routes(self) -> dict[tuple[str, str], LeanHandler]:
        """The publish call past starlette's request cycle (hub/lean_routes.py): its hottest."""
        return {("POST", "/api/v1/publish"): self.answer_publish}

    async def answer_publish(self, request: LeanRequest) -> Answer:
        check_service_token(request.header(b"authorization"), self._api_key, "HUB_API_KEY")
        key = idempotency.check_key(request.header(IDEMPOTENCY_HEADER))
        require_json_content_type(request.header(b"content-type"))
        raw = await request.body()
        body = parse_json(raw, PublishBody)
        data_json = _data_json(raw, body.data)
        if len(data_json) > MAX_DATA_BYTES:
            raise TooLarge(f"data is {len(data_json)} bytes serialized; the limit is {MAX_DATA_BYTES}")
        user_ids = sorted(set(body.user_ids))
        event = Event.published(body.name, data_json)
        if key is None:
            written = await self._events.publish(user_ids, event)
            if written is None:
                async with self._db.sessions() as session:
                    raise _unknown_users(user_ids, await existing_user_ids(session, user_ids))
            return Answer(202, _answer(written))
        keyed = idempotency.KeyedRequest("publish", key, idempotency.fingerprint(raw))

        async def append(tx: Transaction) -> idempotency.StoredAnswer:
            written = await tx.emit(user_ids, event)
            if len(written) != len(user_ids):  # raising rolls the append back
                raise _unknown_users(user_ids, {event.user_id for event in written})
            return idempotency.StoredAnswer(202, _answer(written))

        answer, replayed = await idempotency.answer_once(self._db, self._events, keyed, append)
        return Answer(answer.status_code, answer.body, REPLAYED if replayed else ())

    @api(summary="The caller's stream history after an id", tag="publish", query=EventsQuery,
         response=EventsOut, auth="user", errors=(401, 404, 422))
    async def history(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._auth)
        query = read_query(request, EventsQuery)
        async with self._db.sessions() as session:
            head = await streams.head(session, identity.user_id)
            if head is None:
                raise NotFound("no stream for this user")
            # up to the head just read: on READ COMMITTED the next statement sees newer commits
            events = await streams.read(session, identity.user_id, query.after, query.limit,
                                        head.last_id)
        items = b",".join(e.payload for e in events)
        body = b'{"epoch":%s,"items":[%s],"last_event_id":%d}' % (
            orjson.dumps(head.epoch), items, head.last_id)
        return Response(body, media_type="application/json")


def _data_json(raw: bytes, data: dict[str, Any]) -> bytes:
    """`data` serialized, or 422 for what JSON cannot carry faithfully: pydantic accepts NaN and
    Infinity (not JSON) and out-of-range numbers, which orjson would write as null or refuse."""
    try:
        orjson.loads(raw)
        return orjson.dumps(data)
    except orjson.JSONDecodeError as exc:
        raise Invalid({"data": f"not valid JSON: {exc}"}) from None
    except orjson.JSONEncodeError as exc:
        raise Invalid({"data": f"cannot be sent as JSON: {exc}"}) from None


def _answer(written: list[StoredEvent]) -> bytes:
    return orjson.dumps({"events": {str(e.user_id): e.id for e in written}})


def _unknown_users(user_ids: list[int], known: Iterable[int]) -> Invalid:
    unknown = sorted(set(user_ids).difference(known))
    shown = ", ".join(map(str, unknown[:20])) + (" ..." if len(unknown) > 20 else "")
    return Invalid({"user_ids": f"unknown user ids: {shown}"})

