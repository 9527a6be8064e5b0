"""REST calls of the exchange bridge (protocol §8)."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.errors import Conflict, Forbidden, Invalid, NotFound, Unavailable, UnsupportedMediaType
from hub.http import api, invalid_from, is_json_content_type, link, read_body, read_path
from hub.identity import Authenticator, authenticate_request
from hub.responses import json_response
from parser_bridge.exchange import money
from parser_bridge.exchange.events import AmountOut, SubtotalOut
from parser_bridge.exchange.requests import MAX_DB_ID, AlreadyFinal, ExchangeRequests, UnknownRequest

_EXCHANGE = "/api/v1/exchange/{request_id:int}"


class ExchangePath(BaseModel):
    request_id: Annotated[int, Field(ge=1, le=MAX_DB_ID)]


class ExchangeAccepted(BaseModel):
    request_id: int
    status: Literal["pending"]


class ExchangeOut(BaseModel):
    request_id: int
    status: Literal["pending", "completed", "failed"]
    breakdown: list[SubtotalOut]
    total_rub: AmountOut | None
    error: str | None


class ExchangeResultBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: Annotated[str, Field(max_length=4096)]
    request_id: int
    breakdown: Annotated[list[money.Subtotal], Field(max_length=money.MAX_BILLS)]


class Ok(BaseModel):
    status: Literal["ok"]


async def read_exact_json(request: Request) -> object:
    """The JSON body with every fraction as an exact Decimal: 415 without a JSON content type,
    413 over 1 MiB, 422 if it is not JSON."""
    if not is_json_content_type(request.headers.get("content-type")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    body = await read_body(request)
    try:
        return money.loads_exact(body)
    except (ValueError, RecursionError):
        raise Invalid({"body": "not valid JSON"}, "body: not valid JSON") from None


class ExchangeApi:
    """Routes of §8 over `ExchangeRequests`; users see only their own requests (404 otherwise)."""

    def __init__(self, requests: ExchangeRequests, authenticator: Authenticator,
                 service_token: str | None) -> None:
        self._requests = requests
        self._authenticator = authenticator
        self._service_token = service_token

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/exchange", self.submit, methods=["POST"]),
            Route(_EXCHANGE, self.show, methods=["GET"]),
            Route("/api/exchange_result", self.result, methods=["PUT"]),
        ]

    @api(summary="Convert bills to roubles; exchange.result follows", tag="exchange",
         body=money.ExchangeOrder, response=ExchangeAccepted, status=202, auth="user",
         errors=(401, 413, 415, 422, 503),
         links={"GetExchange": link("GET", _EXCHANGE, {"request_id": "$response.body#/request_id"})})
    async def submit(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        if not self._requests.offered:
            raise Unavailable("exchange is not available: EXCHANGE_SERVICE_URL is not configured")
        raw = await read_exact_json(request)
        try:
            order = money.ExchangeOrder.model_validate(raw)
        except ValidationError as exc:
            raise invalid_from(exc) from None
        view = await self._requests.submit(identity.user_id, order)
        return json_response({"request_id": view.request_id, "status": view.status}, 202)

    @api(summary="One of your exchange requests", tag="exchange", path=ExchangePath,
         response=ExchangeOut, auth="user", errors=(401, 404))
    async def show(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        view = await self._requests.get(identity.user_id, read_path(request, ExchangePath).request_id)
        if view is None:
            raise NotFound("no such exchange request of yours")
        return json_response(view.to_json())

    @api(summary="The exchange service's result (EXCHANGE_SERVICE_TOKEN in the body)",
         tag="exchange", body=ExchangeResultBody, response=Ok, auth="exchange_token",
         errors=(403, 404, 409, 413, 415, 422))
    async def result(self, request: Request) -> Response:
        raw = await read_exact_json(request)
        token = raw.get("token") if isinstance(raw, dict) else None
        if self._service_token is None:
            raise Forbidden("EXCHANGE_SERVICE_TOKEN is not configured on this hub")
        if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self._service_token.encode()):
            raise Forbidden("missing or wrong EXCHANGE_SERVICE_TOKEN")
        try:
            body = ExchangeResultBody.model_validate(raw)
        except ValidationError as exc:
            raise invalid_from(exc) from None
        try:
            await self._requests.complete(body.request_id, body.breakdown)
        except UnknownRequest:
            raise NotFound(f"no exchange request {body.request_id}") from None
        except AlreadyFinal:
            raise Conflict(f"exchange request {body.request_id} already has its result") from None
        except money.BreakdownMismatch as exc:
            raise Invalid({"breakdown": str(exc)}) from None
        return json_response({"status": "ok"})
