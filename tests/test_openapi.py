"""/api/openapi.json: a valid OpenAPI 3.1 document, generated from the validating schemas."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from hub.app import create_app
from hub.http import ApiSpec
from hub.openapi import REF
from hub.settings import Settings
from tests.conftest import RunningHub, unique_name

OPS_PATHS = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def hub(module_hub: RunningHub) -> RunningHub:
    return module_hub


def _is_rest(route: Route) -> bool:
    return route.path.startswith("/api/") or route.path in OPS_PATHS


def _rest_routes(settings: Settings) -> list[Route]:
    app = create_app(settings)
    return [route for route in app.routes if isinstance(route, Route) and _is_rest(route)]


def _openapi_path(path: str) -> str:
    return re.sub(r"{(\w+)(:\w+)?}", r"{\1}", path)


async def _document(hub: RunningHub) -> dict[str, Any]:
    async with asyncio.timeout(10):
        response = await hub.http.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return dict(response.json())


async def test_document_is_valid_openapi_3_1(hub: RunningHub) -> None:
    document = await _document(hub)
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


async def test_every_rest_route_is_documented_and_nothing_else(hub: RunningHub) -> None:
    document = await _document(hub)
    expected = {(_openapi_path(route.path), method.lower())
                for route in _rest_routes(hub.settings)
                for method in (route.methods or set()) - {"HEAD"}}
    documented = {(path, method) for path, operations in document["paths"].items()
                  for method in operations}
    assert expected - documented == set(), "routes without @api(...): add one to each endpoint"
    assert documented - expected == set(), "documented operations that the app does not serve"
    for path in ("/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/refresh",
                 "/api/v1/auth/me", "/api/v1/users", *OPS_PATHS, "/api/openapi.json"):
        assert path in document["paths"], path


async def test_operations_are_complete(hub: RunningHub) -> None:
    document = await _document(hub)
    operation_ids: list[str] = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            assert operation["summary"], (method, path)
            assert operation["responses"], (method, path)
            for name in re.findall(r"{(\w+)}", path):
                assert any(p["in"] == "path" and p["name"] == name
                           for p in operation.get("parameters", [])), (method, path, name)
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": REF.format(model="Error")}
    assert len(operation_ids) == len(set(operation_ids))
    me = document["paths"]["/api/v1/auth/me"]["get"]
    assert me["security"] == [{"bearerAuth": []}]
    assert "401" in me["responses"]
    assert "security" not in document["paths"]["/api/v1/auth/login"]["post"]
    assert "201" in document["paths"]["/api/v1/auth/register"]["post"]["responses"]


async def test_request_schemas_are_the_validating_models(hub: RunningHub) -> None:
    """Each documented body and query schema is exactly the JSON schema of the pydantic model
    that the endpoint declared, which is the model `read_json`/`read_query` validates with."""
    document = await _document(hub)
    schemas = document["components"]["schemas"]
    checked = 0
    for route in _rest_routes(hub.settings):
        spec = getattr(route.endpoint, "__api__", None)
        assert isinstance(spec, ApiSpec), route.path
        for method in (route.methods or set()) - {"HEAD"}:
            operation = document["paths"][_openapi_path(route.path)][method.lower()]
            if spec.body is not None:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                name = ref.rsplit("/", 1)[1]
                model_schema = spec.body.model_json_schema(ref_template=REF, mode="validation")
                model_schema.pop("$defs", None)
                assert schemas[name] == model_schema, route.path
                checked += 1
            else:
                assert "requestBody" not in operation, route.path
            if spec.query is not None:
                query_schema = spec.query.model_json_schema(ref_template=REF, mode="validation")
                params = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
                assert set(params) == set(query_schema["properties"]), route.path
                for name, prop in query_schema["properties"].items():
                    assert params[name]["schema"] == prop
                    assert params[name]["required"] == (name in query_schema.get("required", []))
                checked += 1
    assert checked >= 4  # register, login, refresh bodies and the users query at least


async def test_documented_limits_are_the_enforced_limits(hub: RunningHub) -> None:
    """Read the username and password rules out of the document and probe the server with them."""
    document = await _document(hub)
    ref = document["paths"]["/api/v1/auth/register"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    username, password = schema["properties"]["username"], schema["properties"]["password"]
    assert set(schema["required"]) == {"username", "password"}
    assert schema["additionalProperties"] is False
    assert (username["minLength"], username["maxLength"]) == (3, 32)
    assert (password["minLength"], password["maxLength"]) == (8, 128)
    assert re.fullmatch(username["pattern"], "a.b-c_D9")
    assert not re.fullmatch(username["pattern"], "a b")

    longest = unique_name("m").ljust(username["maxLength"], "q")
    probes: list[tuple[dict[str, Any], int]] = [
        ({"username": longest, "password": "p" * password["minLength"]}, 201),
        ({"username": longest + "q", "password": "p" * password["minLength"]}, 422),
        ({"username": unique_name("m"), "password": "p" * (password["minLength"] - 1)}, 422),
        ({"username": unique_name("m"), "password": "p" * (password["maxLength"] + 1)}, 422),
        ({"username": unique_name("m"), "password": "p" * password["maxLength"]}, 201),
        ({"username": "x" * (username["minLength"] - 1), "password": "p" * 10}, 422),
    ]
    async with asyncio.timeout(30):
        for body, status in probes:
            response = await hub.http.post("/api/v1/auth/register", json=body)
            assert response.status_code == status, (body, response.text)

    users = document["paths"]["/api/v1/users"]["get"]
    q = next(p for p in users["parameters"] if p["name"] == "q")
    assert q["required"] is True
    assert q["schema"]["maxLength"] == 32


async def test_document_is_served_from_a_cache(hub: RunningHub) -> None:
    async with asyncio.timeout(10):
        first = await hub.http.get("/api/openapi.json")
        second = await hub.http.get("/api/openapi.json")
    assert first.content == second.content
