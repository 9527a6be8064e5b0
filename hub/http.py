"""Request parsing and endpoint declarations shared by every REST call.

`read_json` and `read_query` validate with the same pydantic models that `api(...)` attaches to
an endpoint, and `hub.openapi` builds the OpenAPI document from those attachments, so the
document cannot drift from what the server accepts.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from hub.errors import Forbidden, Invalid, NotFound, TooLarge, UnsupportedMediaType
from hub.storable_text import loads_allowing_surrogates, may_spell_surrogates, unstorable_json_path

MAX_BODY_BYTES = 1024 * 1024
AUTH_SCHEMES = ("user", "hub_api_key", "parser_token", "exchange_token")
M = TypeVar("M", bound=BaseModel)
E = TypeVar("E", bound=Callable[..., Awaitable[Response]])


@dataclass(frozen=True)
class ApiSpec:
    """What an endpoint accepts and answers, for validation and the OpenAPI document."""

    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    auth: str | None = None  # "user", "hub_api_key", "parser_token", "exchange_token"
    errors: Sequence[int] = ()
    headers: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    content_type: str = "application/json"
    links: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    uses_database: bool = True  # then a lost database connection is a 503 (hub.errors)


def api(*, summary: str, tag: str, body: type[BaseModel] | None = None,
        body_required: bool = True, query: type[BaseModel] | None = None,
        path: type[BaseModel] | None = None, response: type[BaseModel] | None = None,
        status: int = 200, auth: str | None = None, errors: Sequence[int] = (),
        headers: Mapping[str, dict[str, Any]] | None = None,
        content_type: str = "application/json",
        links: Mapping[str, dict[str, Any]] | None = None,
        uses_database: bool = True) -> Callable[[E], E]:
    """Attach an `ApiSpec` to an endpoint (a function or a method); `hub.openapi` reads it.

    `body`, `query` and `path` must be the models the endpoint passes to `read_json`,
    `read_query` and `read_path`; `headers` maps each optional request header to the JSON
    schema of the values the endpoint accepts; `links` are OpenAPI link objects of the success
    answer (what a client can call next with the ids it got). An endpoint that `uses_database`
    may answer 503 (`hub.errors.database_error_handler`), which the document adds."""
    if auth is not None and auth not in AUTH_SCHEMES:
        raise ValueError(f"api(auth={auth!r}): use one of {', '.join(AUTH_SCHEMES)}")
    spec = ApiSpec(summary=summary, tag=tag, body=body, body_required=body_required,
                   query=query, path=path, response=response, status=status, auth=auth,
                   errors=tuple(errors), headers=dict(headers or {}), content_type=content_type,
                   links=dict(links or {}), uses_database=uses_database)

    def attach(endpoint: E) -> E:
        endpoint.__api__ = spec  # type: ignore[attr-defined]
        return endpoint

    return attach


def only_json_type(kind: str) -> Callable[[dict[str, Any]], None]:
    """A pydantic `json_schema_extra` that keeps only the `kind` branch of a field's `anyOf`,
    for a field whose validator refuses the other branches (a Decimal that must be a JSON
    number), or whose other branch cannot be sent (a null query parameter is just absent)."""
    def keep(schema: dict[str, Any]) -> None:
        branch = next(b for b in schema.pop("anyOf") if b.get("type") == kind)
        schema.update(branch)
        if schema.get("default", 0) is None:
            del schema["default"]

    return keep


def operation_id(method: str, path: str) -> str:
    """The operationId of `method` on the route `path` (e.g. `get_api_v1_chats_chat_id`)."""
    return f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', openapi_path(path).lower()).strip('_')}"


def link(method: str, path: str, parameters: dict[str, str] | None = None,
         body: Any = None) -> dict[str, Any]:
    """An OpenAPI link object to the operation `method` on the route `path`; values are runtime
    expressions such as `$response.body#/id`."""
    found: dict[str, Any] = {"operationId": operation_id(method, path)}
    if parameters:
        found["parameters"] = parameters
    if body is not None:
        found["requestBody"] = body
    return found


def openapi_path(path: str) -> str:
    """The OpenAPI form of a route path: `{chat_id:int}` becomes `{chat_id}`."""
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing (413) anything over `limit` without reading it all."""
    return await collect_body(request.headers.get("content-length"), request.stream(), limit)


async def collect_body(declared: str | None, chunks: AsyncIterator[bytes],
                       limit: int = MAX_BODY_BYTES) -> bytes:
    """`read_body` for a declared Content-Length and the body's chunks as they arrive."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is over {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def has_body(request: Request) -> bool:
    """Whether the request carries a body at all (for calls whose body is optional)."""
    return ("transfer-encoding" in request.headers
            or request.headers.get("content-length", "0").strip() not in ("", "0"))


def is_json_content_type(value: str | None) -> bool:
    if not value:
        return False
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, model: type[M]) -> M:
    """Validate the JSON body as `model`: 415 without a JSON content type, 413 over 1 MiB,
    422 for malformed JSON or any bad field (each one named, a lone surrogate in any string
    included: see `hub.storable_text`)."""
    return (await read_json_and_body(request, model))[0]


async def read_json_and_body(request: Request, model: type[M]) -> tuple[M, bytes]:
    """`read_json`, also returning the raw body (for idempotency fingerprints)."""
    require_json_content_type(request.headers.get("content-type"))
    body = await read_body(request)
    return parse_json(body, model), body


def require_json_content_type(value: str | None) -> None:
    """415 unless `value` (the Content-Type header) names JSON."""
    if not is_json_content_type(value):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")


def parse_json(body: bytes, model: type[M]) -> M:
    """`body` validated as `model`; 422 for malformed JSON or any bad field (`read_json`)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _unstorable_field(body) or invalid_from(exc) from None


def _unstorable_field(body: bytes) -> Invalid | None:
    """The parser refuses a JSON string with a lone surrogate as "not valid JSON"; name the
    field instead, so the client learns which text cannot be stored."""
    if not may_spell_surrogates(body):
        return None
    try:
        found = unstorable_json_path(loads_allowing_surrogates(body))
    except ValueError:
        return None
    return None if found is None else Invalid({found[0]: found[1]})


def read_query(request: Request, model: type[M]) -> M:
    """Validate the query string as `model`; 422 names each bad parameter."""
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise invalid_from(exc) from None


def read_path(request: Request, model: type[M]) -> M:
    """Validate the path parameters as `model`. An id outside the model's range names no
    resource (and would overflow the database's integer), so it is a 404, like an unknown id."""
    try:
        return model.model_validate(request.path_params)
    except ValidationError:
        raise NotFound(f"no such resource: {request.url.path}") from None


PATTERN_MISMATCH = "is not in the form this field accepts (its pattern is in /api/openapi.json)"


def invalid_from(exc: ValidationError) -> Invalid:
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        if error["type"] == "json_invalid":
            return Invalid({"body": "not valid JSON"}, "body: not valid JSON")
        location = ".".join(str(part) for part in error["loc"]) or "body"
        # pydantic's message would quote the whole regular expression back at the client
        message = (PATTERN_MISMATCH if error["type"] == "string_pattern_mismatch" else error["msg"])
        fields.setdefault(location, message)
    return Invalid(fields)


def bearer_token(request: Request) -> str | None:
    return bearer_in(request.headers.get("authorization"))


def bearer_in(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header's value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_service_token(request: Request, expected: str | None, name: str) -> None:
    """403 unless the bearer token equals the configured service credential (constant time)."""
    check_service_token(request.headers.get("authorization"), expected, name)


def check_service_token(authorization: str | None, expected: str | None, name: str) -> None:
    """`require_service_token` for the Authorization header's value."""
    given = bearer_in(authorization)
    if expected is None:
        raise Forbidden(f"{name} is not configured on this hub")
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden(f"missing or wrong {name}")
