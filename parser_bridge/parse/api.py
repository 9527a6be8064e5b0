"""REST calls of the parser bridge (protocol §7)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.errors import Conflict, NotFound, RateLimited
from hub.http import api, link, read_json, read_path, require_service_token
from hub.identity import Authenticator, authenticate_request
from hub.responses import json_response
from parser_bridge.parse.requests import (
    MAX_DB_ID,
    AlreadyFinal,
    ParseRequests,
    TooManyPending,
    UnknownRequest,
)
from parser_bridge.parse.result import ParseResult

_HEX4 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join((  # the textual forms of RFC 4291 §2.2 without an embedded IPv4 address
    f"(?:{_HEX4}:){{7}}{_HEX4}", f"(?:{_HEX4}:){{1,7}}:",
    *(f"(?:{_HEX4}:){{1,{6 - n}}}(?::{_HEX4}){{1,{n + 1}}}" for n in range(6)),
    f":(?:(?::{_HEX4}){{1,7}}|:)",
))
_PORT = "(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# http(s), an optional user, a host name (ASCII letters and digits, `.`, `-`, `_`, `~`, `%`;
# an IDN in its xn-- form) or a bracketed IPv6 address, an optional port of 0-65535, then
# anything printable: URLs that `urlsplit` reads with a host and a valid port. A pattern, so
# that the OpenAPI document states the rule the server applies.
URL_PATTERN = (r"^[Hh][Tt][Tt][Pp][Ss]?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?"
               rf"(?:[A-Za-z0-9._~%-]+|\[(?:{_IPV6})\])(?::{_PORT})?"
               r"(?:[/?#][^\s\x00-\x1f\x7f]*)?$")


class ParseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Annotated[str, Field(min_length=1, max_length=2048, pattern=URL_PATTERN)]

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


class ParsePath(BaseModel):
    request_id: Annotated[int, Field(ge=1, le=MAX_DB_ID)]


_PARSE = "/api/v1/parse/{request_id:int}"
_FROM_ACCEPTED = {"request_id": "$response.body#/request_id"}


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
            Route(_PARSE, self.show, methods=["GET"]),
            Route(_PARSE + "/html", self.page, methods=["GET"]),
            Route(_PARSE + "/result", self.result, methods=["PUT"]),
        ]

    @api(summary="Ask for a page to be fetched; parse.completed follows", tag="parser",
         body=ParseBody, response=ParseAccepted, status=202, auth="user",
         errors=(401, 413, 415, 422, 429),
         links={"GetParse": link("GET", _PARSE, _FROM_ACCEPTED),
                "PutResult": link("PUT", _PARSE + "/result", _FROM_ACCEPTED)})
    async def submit(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        body = await read_json(request, ParseBody)
        try:
            view = await self._requests.submit(identity.user_id, body.url)
        except TooManyPending as exc:
            raise RateLimited(f"{exc}: wait for a result (PARSE_MAX_PENDING)", exc.retry_after) from None
        return json_response({"request_id": view.request_id, "status": view.status}, 202)

    @api(summary="One of your parse requests", tag="parser", path=ParsePath, response=ParseOut,
         auth="user", errors=(401, 404))
    async def show(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        view = await self._requests.get(identity.user_id, read_path(request, ParsePath).request_id)
        if view is None:
            raise NotFound("no such parse request of yours")
        return json_response(view.to_json())

    @api(summary="The fetched page, as a text/plain attachment (never rendered)", tag="parser",
         path=ParsePath, auth="user", errors=(401, 404), content_type="text/plain")
    async def page(self, request: Request) -> Response:
        identity = await authenticate_request(request, self._authenticator)
        request_id = read_path(request, ParsePath).request_id
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
         tag="parser", body=ParseResult, path=ParsePath, response=ParseOut, auth="parser_token",
         errors=(403, 404, 409, 413, 415, 422))
    async def result(self, request: Request) -> Response:
        require_service_token(request, self._parser_token, "PARSER_SERVICE_TOKEN")
        request_id = read_path(request, ParsePath).request_id
        result = await read_json(request, ParseResult)
        try:
            view = await self._requests.complete(request_id, result)
        except UnknownRequest:
            raise NotFound("no such parse request") from None
        except AlreadyFinal:
            raise Conflict("the request already has its result") from None
        return json_response(view.to_json())
