"""The OpenAPI document, built from the `ApiSpec` each endpoint carries (see `hub.http.api`)."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from hub.http import ApiSpec, openapi_path, operation_id

REF = "#/components/schemas/{model}"
# The exchange service's credential travels in the JSON body (`token`, protocol §8), which an
# OpenAPI security scheme cannot describe: its operation says so in its description instead.
_SECURITY = {"user": "bearerAuth", "hub_api_key": "hubApiKey", "parser_token": "parserToken"}
_BODY_CREDENTIAL = {"exchange_token": "The credential is the body's `token` (EXCHANGE_SERVICE_TOKEN)."}
# Headers every answer of a status carries (hub.errors sets them).
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
    503: {"Retry-After": {"required": False, "schema": {"type": "string", "pattern": "^[0-9]+$"}}},
}
_ERROR_TEXT = {
    400: "Bad request", 401: "Missing, expired or invalid access token",
    403: "Forbidden (a missing or wrong service credential, or a block)", 404: "Not found", 409: "Conflict",
    413: "Body too large", 415: "Body is not JSON", 422: "Validation failed (fields named)",
    429: "Rate limited", 503: "A dependency is down",
}


def build_openapi(routes: list[BaseRoute], title: str, version: str) -> dict[str, Any]:
    specs: list[tuple[Route, str, ApiSpec]] = []
    for route in routes:
        spec = getattr(getattr(route, "endpoint", None), "__api__", None)
        if isinstance(route, Route) and isinstance(spec, ApiSpec):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                specs.append((route, method, spec))
    # Requests are described as the models validate them, answers as they serialize them.
    inputs = {m for _, _, spec in specs for m in (spec.body, spec.query) if m is not None}
    outputs = {spec.response for _, _, spec in specs if spec.response is not None}
    keys, schema = models_json_schema(
        [*((m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)),
         *((m, "serialization") for m in sorted(outputs, key=lambda m: m.__name__))],
        ref_template=REF,
    )
    components: dict[str, Any] = dict(schema.get("$defs", {}))
    components["Error"] = {
        "type": "object", "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"},
                       "fields": {"type": "object", "additionalProperties": {"type": "string"}}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for route, method, spec in specs:
        operation: dict[str, Any] = {
            "summary": spec.summary, "tags": [spec.tag],
            "operationId": operation_id(method, route.path),
        }
        params = _path_parameters(route, spec)
        if spec.query is not None:
            query_schema = spec.query.model_json_schema(ref_template=REF)
            required = set(query_schema.get("required", []))
            params += [{"name": name, "in": "query", "required": name in required, "schema": prop}
                       for name, prop in query_schema.get("properties", {}).items()]
        params += [{"name": header, "in": "header", "required": False, "schema": header_schema}
                   for header, header_schema in spec.headers.items()]
        if params:
            operation["parameters"] = params
        if spec.body is not None:
            operation["requestBody"] = {"required": spec.body_required, "content": {"application/json": {
                "schema": {"$ref": keys[(spec.body, "validation")]["$ref"]}}}}
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is not None:
            ok["content"] = {spec.content_type: {
                "schema": {"$ref": keys[(spec.response, "serialization")]["$ref"]}}}
        elif spec.content_type != "application/json":
            ok["content"] = {spec.content_type: {"schema": {"type": "string"}}}
        if spec.links:
            ok["links"] = dict(spec.links)
        responses: dict[str, Any] = {str(spec.status): ok}
        for status in sorted({*spec.errors, *((503,) if spec.uses_database else ())}):
            responses[str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
            }
            if status in _ERROR_HEADERS:
                responses[str(status)]["headers"] = _ERROR_HEADERS[status]
        operation["responses"] = responses
        if spec.auth in _SECURITY:
            operation["security"] = [{_SECURITY[spec.auth]: []}]
        elif spec.auth in _BODY_CREDENTIAL:
            operation["description"] = _BODY_CREDENTIAL[spec.auth]
        paths.setdefault(openapi_path(route.path), {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "hubApiKey": {"type": "http", "scheme": "bearer", "description": "HUB_API_KEY"},
                "parserToken": {"type": "http", "scheme": "bearer",
                                "description": "PARSER_SERVICE_TOKEN"},
            },
        },
    }


def _path_parameters(route: Route, spec: ApiSpec) -> list[dict[str, Any]]:
    """The path parameters as `spec.path` validates them (see `hub.http.read_path`)."""
    if not route.param_convertors:
        return []
    properties = spec.path.model_json_schema(ref_template=REF)["properties"] if spec.path else {}
    missing = set(route.param_convertors) - set(properties)
    if missing:
        raise ValueError(f"{route.path}: declare {', '.join(sorted(missing))} in api(path=...)")
    return [{"name": name, "in": "path", "required": True, "schema": properties[name]}
            for name in route.param_convertors]
