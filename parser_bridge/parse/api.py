"""REST calls of the parser bridge (protocol §7)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.errors import Conflict, NotFound, RateLimited
from hub.http import api, read_json, require_service_token
from hub.identity import Authenticator, authenticate_request
from hub.responses import json_response
from parser_bridge.parse.requests import AlreadyFinal, ParseRequests, TooManyPending, UnknownRequest
from parser_bridge.parse.result import ParseResult


class ParseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2048)]

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (raises ValueError for a bad port)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
            raise ValueError("must not contain spaces or control characters")
        return value


class ParseAccepted(BaseModel):
    request_id: int
    status: Literal["pending"]


class ParseOut(BaseModel):
    request_id: int
    url: str
    status: Literal["pending", "success", "failure"]
    title: str | None
    error: str | None
    created_at: str
    updated_at: str


class ParseApi:
    """Routes of §7 over `ParseRequests`; users see only their own requests (404 otherwise)."""

    def __init__(self, requests: ParseRequests, authenticator: Authenticator,
                 parser_token: str | None) -> None:
        self._requests = requests
        self._authenticator = authenticator
        self._parser_token = parser_token

    def routes(self) -> list[Route]:
        return [
            Route("/api/v1/parse", self.submit, methods=["POST"]),
            Route("/api/v1/parse/{request_id:int}", self.show, methods=["GET"]),
            Route("/api/v1/parse/{request_id:int}/html", self.page, methods=["GET"]),
            Route("/api/v1/parse/{request_id:int}/result", self.result, methods=["PUT"]),
        ]

    @api(summary="Ask for a page to be fetched; parse.completed follows", tag="parser",
         body=ParseBody, response=ParseAccepted, status=202, auth="user",
         errors=(401, 413, 415, 422, 429))
    async def submit(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        body = await read_json(request, ParseBody)
        try:
            view = await self._requests.submit(identity.user_id, body.url)
        except TooManyPending as exc:
            raise RateLimited(f"{exc}: wait for a result (PARSE_MAX_PENDING)", exc.retry_after) from None
        return json_response({"request_id": view.request_id, "status": view.status}, 202)

    @api(summary="One of your parse requests", tag="parser", response=ParseOut, auth="user",
         errors=(401, 404))
    async def show(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        view = await self._requests.get(identity.user_id, request.path_params["request_id"])
        if view is None:
            raise NotFound("no such parse request of yours")
        return json_response(view.to_json())

    @api(summary="The fetched page, as a text/plain attachment (never rendered)", tag="parser",
         auth="user", errors=(401, 404), content_type="text/plain")
    async def page(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        request_id = request.path_params["request_id"]
        html = await self._requests.html(identity.user_id, request_id)
        if html is None:
            raise NotFound("no fetched page: the request is not yours, not done or failed")
        return Response(html, media_type="text/plain; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="parse-{request_id}.html.txt"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        })

    @api(summary="The parser's result (PARSER_SERVICE_TOKEN); the first result wins",
         tag="parser", body=ParseResult, response=ParseOut, auth="parser_token",
         errors=(403, 404, 409, 413, 415, 422))
    async def result(self, request: Request) -> Response:
        require_service_token(request, self._parser_token, "PARSER_SERVICE_TOKEN")
        result = await read_json(request, ParseResult)
        try:
            view = await self._requests.complete(request.path_params["request_id"], result)
        except UnknownRequest:
            raise NotFound("no such parse request") from None
        except AlreadyFinal:
            raise Conflict("the request already has its result") from None
        return json_response(view.to_json())
