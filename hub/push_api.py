"""Web Push REST calls (protocol §13): the VAPID public key and the user's subscriptions."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub import push_store
from hub.address_policy import AddressRefused, resolve
from hub.db import Database
from hub.errors import Invalid, NotFound
from hub.http import api, read_json, read_path
from hub.identity import Authenticator, authenticate_request
from hub.push_crypto import check_subscription_keys
from hub.responses import json_response

MAX_ENDPOINT = 2048
MAX_INT32 = 2**31 - 1


class SubscriptionKeys(BaseModel):
    p256dh: Annotated[str, Field(min_length=1, max_length=128)]
    auth: Annotated[str, Field(min_length=1, max_length=64)]


class NewSubscription(BaseModel):
    """The browser's `PushSubscription.toJSON()` (its `expirationTime` is accepted and ignored)."""

    model_config = ConfigDict(extra="ignore")
    endpoint: Annotated[str, Field(min_length=1, max_length=MAX_ENDPOINT)]
    keys: SubscriptionKeys


class SubscriptionPath(BaseModel):
    subscription_id: Annotated[int, Field(ge=1, le=MAX_INT32)]


class SubscriptionOut(BaseModel):
    id: int


class PublicKeyOut(BaseModel):
    public_key: str


class PushApi:
    """Routes of §13. `public_key` is None when push is off (every call then answers 404)."""

    def __init__(self, db: Database, authenticator: Authenticator, public_key: str | None,
                 max_subscriptions: int, allow_private: bool) -> None:
        self._db = db
        self._authenticator = authenticator
        self._public_key = public_key
        self._max = max_subscriptions
        self._allow_private = allow_private

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/push/key", self.key, methods=["GET"]),
            Route("/api/v1/push/subscriptions", self.subscribe, methods=["POST"]),
            Route("/api/v1/push/subscriptions/{subscription_id:int}", self.unsubscribe,
                  methods=["DELETE"]),
        ]

    @api(summary="The VAPID public key browsers subscribe with (applicationServerKey); 404 when "
                 "Web Push is off", tag="push", response=PublicKeyOut, errors=(404,), uses_database=False)
    async def key(self, request: Request) -> Response:
        return json_response({"public_key": self._enabled()})

    @api(summary="Subscribe this browser (its PushSubscription JSON): 201 new, 200 with the same "
                 "id for an endpoint already subscribed; the endpoint must be https on a public "
                 "address; at most PUSH_MAX_SUBSCRIPTIONS per user", tag="push",
         body=NewSubscription, response=SubscriptionOut, status=201, auth="user",
         errors=(401, 404, 413, 415, 422))
    async def subscribe(self, request: Request) -> Response:
        user_id = (await authenticate_request(request, self._authenticator)).user_id
        self._enabled()
        body = await read_json(request, NewSubscription)
        problem = check_subscription_keys(body.keys.p256dh, body.keys.auth)
        if problem is not None:
            raise Invalid({"keys": problem})
        await self._check_endpoint(body.endpoint)
        try:
            return await self._subscribe(user_id, body)
        except IntegrityError:  # the same endpoint, subscribed concurrently: now it is there
            return await self._subscribe(user_id, body)

    async def _subscribe(self, user_id: int, body: NewSubscription) -> Response:
        async with self._db.sessions.begin() as session:
            existing = await push_store.find_subscription(session, body.endpoint)
            if existing is not None and existing.user_id == user_id:
                existing.p256dh, existing.auth = body.keys.p256dh, body.keys.auth
                return json_response({"id": existing.id}, status=200)
            if existing is not None:  # the browser now belongs to whoever signed in on it
                await push_store.remove_subscription(session, existing.id)
            if await push_store.count_subscriptions(session, user_id) >= self._max:
                raise Invalid({"endpoint": f"at most {self._max} subscriptions per user: delete "
                                           "one first"})
            new_id = await push_store.add_subscription(session, user_id, body.endpoint,
                                                        body.keys.p256dh, body.keys.auth)
        return json_response({"id": new_id}, status=201)

    @api(summary="Unsubscribe; 404 when the subscription is not the caller's", tag="push",
         path=SubscriptionPath, status=204, auth="user", errors=(401, 404))
    async def unsubscribe(self, request: Request) -> Response:
        user_id = (await authenticate_request(request, self._authenticator)).user_id
        self._enabled()
        subscription_id = read_path(request, SubscriptionPath).subscription_id
        async with self._db.sessions.begin() as session:
            if await push_store.remove_subscription(session, subscription_id, user_id):
                return Response(status_code=204)
        raise NotFound(f"no push subscription {subscription_id} among yours")

    def _enabled(self) -> str:
        if self._public_key is None:
            raise NotFound("Web Push is off on this hub (VAPID_PRIVATE_KEY is not set)")
        return self._public_key

    async def _check_endpoint(self, endpoint: str) -> None:
        try:
            parts = urlsplit(endpoint)
            port = parts.port or 443
        except ValueError:
            raise Invalid({"endpoint": "must be an https URL"}) from None
        if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
            raise Invalid({"endpoint": "must be an https URL without credentials"})
        try:
            await resolve(parts.hostname, port, allow_private=self._allow_private)
        except AddressRefused as exc:
            raise Invalid({"endpoint": f"must be on a public address: {exc}"}) from None
