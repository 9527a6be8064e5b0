"""The OpenAPI document, built from the `ApiSpec` each endpoint carries (see `hub.http.api`)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute, Route

from hub.http import ApiSpec

REF = "#/components/schemas/{model}"
_SECURITY = {
    "user": "bearerAuth", "hub_api_key": "hubApiKey",
    "parser_token": "parserToken", "exchange_token": "exchangeToken",
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
    models: set[type[BaseModel]] = set()
    for _, _, spec in specs:
        models.update(m for m in (spec.body, spec.response, spec.query) if m is not None)
    keys, schema = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=REF
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
            "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', route.path.lower()).strip('_')}",
        }
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}
                  for name in route.param_convertors]
        if spec.query is not None:
            query_schema = spec.query.model_json_schema(ref_template=REF)
            required = set(query_schema.get("required", []))
            params += [{"name": name, "in": "query", "required": name in required, "schema": prop}
                       for name, prop in query_schema.get("properties", {}).items()]
        params += [{"name": header, "in": "header", "required": False, "schema": {"type": "string"}}
                   for header in spec.headers]
        if params:
            operation["parameters"] = params
        if spec.body is not None:
            operation["requestBody"] = {"required": spec.body_required, "content": {"application/json": {
                "schema": {"$ref": keys[(spec.body, "validation")]["$ref"]}}}}
        ok: dict[str, Any] = {"description": "Success"}
        if spec.response is not None:
            ok["content"] = {spec.content_type: {
                "schema": {"$ref": keys[(spec.response, "validation")]["$ref"]}}}
        elif spec.content_type != "application/json":
            ok["content"] = {spec.content_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(spec.status): ok}
        for status in spec.errors:
            responses[str(status)] = {
                "description": _ERROR_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
            }
        operation["responses"] = responses
        if spec.auth is not None:
            operation["security"] = [{_SECURITY[spec.auth]: []}]
        paths.setdefault(_openapi_path(route.path), {})[method.lower()] = operation
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
                "exchangeToken": {"type": "apiKey", "in": "header", "name": "token",
                                  "description": "EXCHANGE_SERVICE_TOKEN, sent in the JSON body"},
            },
        },
    }


def _openapi_path(path: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)
