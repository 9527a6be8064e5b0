"""/api/openapi.json: a valid OpenAPI 3.1 document, generated from the validating schemas."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from starlette.routing import Route

from hub.app import create_app
from hub.http import ApiSpec
from hub.openapi import REF
from hub.settings import Settings
from tests.conftest import RunningHub, register, serve_hub, unique_name

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


# The document agrees with the server: each test below reads a rule out of the document and
# probes the running hub on both sides of it (the old document was looser in each).

def _schema_validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of `schema` whose `#/components/...` references resolve in `document`."""
    return Draft202012Validator({**schema, "components": document["components"]})


def _body_schema(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return dict(document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]])


def _parameter(document: dict[str, Any], path: str, method: str, name: str) -> dict[str, Any]:
    operation = document["paths"][path][method]
    return dict(next(p for p in operation["parameters"] if p["name"] == name))


async def test_path_ids_have_the_servers_range(hub: RunningHub) -> None:
    """Every id in a path is documented with its range, and an id beyond it (past the
    database's integer too) is a 404, never a 500."""
    document = await _document(hub)
    account = await register(hub.http)
    ids = [(path, method, p) for path, operations in document["paths"].items()
           for method, operation in operations.items()
           for p in operation.get("parameters", []) if p["in"] == "path"]
    assert len(ids) >= 9
    async with asyncio.timeout(60):
        for path, method, parameter in ids:
            schema = parameter["schema"]
            assert schema["type"] == "integer", (path, parameter)
            assert schema["minimum"] == 1, (path, parameter)
            assert schema["maximum"] == 2**31 - 1, (path, parameter)
            headers = dict(account.headers)
            if path.endswith("/result"):
                headers["Authorization"] = "Bearer test-parser-token"
            for beyond in (schema["maximum"] + 1, 2**63, 0):
                url = path.replace("{" + parameter["name"] + "}", str(beyond))
                response = await hub.http.request(method.upper(), url, headers=headers,
                                                  json={"status": "failure", "error": "x"})
                assert response.status_code == 404, (method, url, response.text)
                assert response.json()["error"] == "not_found"


async def test_idempotency_key_limits_are_documented(hub: RunningHub) -> None:
    document = await _document(hub)
    account = await register(hub.http)
    async with asyncio.timeout(30):
        created = await hub.http.post("/api/v1/chats", json={"title": "keys"}, headers=account.headers)
        chat_path = f"/api/v1/chats/{created.json()['id']}/messages"
        for path in ("/api/v1/publish", "/api/v1/chats/{chat_id}/messages"):
            schema = _parameter(document, path, "post", "Idempotency-Key")["schema"]
            assert (schema["minLength"], schema["maxLength"]) == (1, 255)
            pattern = re.compile(schema["pattern"])
            for key in ("k" * 255, "k" * 256, "a b", "\u00e9t\u00e9", "~"):
                valid = pattern.search(key) is not None and len(key) <= schema["maxLength"]
                headers = {**account.headers, "Idempotency-Key": key}
                response = await hub.http.post(chat_path, json={"text": "hi"},
                                               headers=headers) if key.isascii() else None
                if response is None:  # httpx refuses non-ASCII header values; so does the pattern
                    assert not valid
                    continue
                assert (response.status_code == 201) == valid, (key, response.text)


TITLES = ["a", " a ", "x" * 100, "x" * 101, "  " + "x" * 100 + "  ", "\u3000x\u3000", "   ",
          "a\tb", "a\nb", "a\x85b", "\u00a0", "caf\u00e9 \U0001f600"]
TEXTS = ["hi", "a\tb\nc", " \n\t ", "x" * 4000, "x" * 4001, "\n" + "x" * 4000 + "\n", "a\x07b",
         "a\x9fb", "\u2028x"]


async def test_chat_text_rules_are_the_documented_patterns(hub: RunningHub) -> None:
    """Titles and message texts: refused control characters and the length after trimming,
    as the documented patterns state them (the old document had a bare string)."""
    document = await _document(hub)
    account = await register(hub.http)
    title = _schema_validator(document, _body_schema(document, "/api/v1/chats", "post"))
    text = _schema_validator(document, _body_schema(document, "/api/v1/chats/{chat_id}/messages", "post"))
    async with asyncio.timeout(60):
        for value in TITLES:
            response = await hub.http.post("/api/v1/chats", json={"title": value}, headers=account.headers)
            assert response.status_code in (201, 422)
            assert title.is_valid({"title": value}) == (response.status_code == 201), (value, response.text)
        chat = (await hub.http.post("/api/v1/chats", json={"title": "t"}, headers=account.headers)).json()
        for value in TEXTS:
            response = await hub.http.post(f"/api/v1/chats/{chat['id']}/messages", json={"text": value},
                                           headers=account.headers)
            assert response.status_code in (201, 422)
            assert text.is_valid({"text": value}) == (response.status_code == 201), (value, response.text)


URLS = ["http://example.com", "HTTPS://example.com:443/a?b#c", "http://user:pw@example.com/",
        "http://[2001:db8::1]:8080/x", "http://[::1]/", "http://[2001:db8::g]/", "http://[1:2]/",
        "http://example.com:65536/", "http://example.com:65535/", "http://example.com:x/",
        "ftp://example.com/", "http:///path", "http://exa mple.com/", " http://example.com",
        "http://example.com/a b", "http://xn--e1afmkfd.xn--p1ai/", "http://\u043f\u0440\u0438.com/",
        "http://example.com/\u00e9", "http://ex\u00b2.com/", "http://a:b:80/"]


async def test_parse_urls_are_the_documented_pattern(hub: RunningHub) -> None:
    document = await _document(hub)
    account = await register(hub.http)
    body = _schema_validator(document, _body_schema(document, "/api/v1/parse", "post"))
    async with asyncio.timeout(60):
        for url in URLS:
            response = await hub.http.post("/api/v1/parse", json={"url": url}, headers=account.headers)
            assert response.status_code in (202, 422)
            assert body.is_valid({"url": url}) == (response.status_code == 202), (url, response.text)


async def test_parse_result_rule_is_documented(hub: RunningHub) -> None:
    """A success needs html, a failure a non-empty error: the document says so (it said every
    field was optional), checked on a real request."""
    document = await _document(hub)
    account = await register(hub.http)
    path = "/api/v1/parse/{request_id}/result"
    result = _schema_validator(document, _body_schema(document, path, "put"))
    service = {"Authorization": "Bearer test-parser-token"}
    async with asyncio.timeout(60):
        for body in ({"status": "success"}, {"status": "failure"}, {"status": "failure", "error": ""},
                     {"status": "success", "html": None}, {"status": "success", "html": ""},
                     {"status": "failure", "error": "gone"}):
            accepted = await hub.http.post("/api/v1/parse", json={"url": "http://example.com/"},
                                           headers=account.headers)
            url = path.replace("{request_id}", str(accepted.json()["request_id"]))
            response = await hub.http.put(url, json=body, headers=service)
            assert response.status_code in (200, 409, 422), response.text
            if response.status_code != 409:  # the embedded parser may have won the race
                assert result.is_valid(body) == (response.status_code == 200), (body, response.text)


async def test_exchange_amounts_are_json_numbers(module_settings: Settings) -> None:
    """The document says number (it said "number or any string"), and the server now refuses a
    string where it used to read one as a Decimal; the exchange result needs no header."""
    settings = replace(module_settings, exchange_service_url="http://127.0.0.1:9")
    async with serve_hub(settings) as hub:
        document = await _document(hub)
        account = await register(hub.http)
        order = _schema_validator(document, _body_schema(document, "/api/v1/exchange", "post"))
        bill = {"denomination_id": 1, "denomination": 10, "count": 2}
        async with asyncio.timeout(30):
            for rate, denomination in (("1.5", 10), (1.5, "10"), (1.5, 10), (True, 10)):
                body = {"exchange_rate": rate, "bills": [{**bill, "denomination": denomination}]}
                response = await hub.http.post("/api/v1/exchange", json=body, headers=account.headers)
                assert response.status_code in (202, 422)
                assert order.is_valid(body) == (response.status_code == 202), (body, response.text)
        result = document["paths"]["/api/exchange_result"]["put"]
        assert "security" not in result
        assert "token" in result["description"]
        assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "hubApiKey", "parserToken"}
        subtotal = document["components"]["schemas"]["SubtotalOut"]["properties"]["subtotal_rub"]
        assert subtotal["type"] == "number" and "anyOf" not in subtotal


async def test_401_answers_carry_the_documented_header(hub: RunningHub) -> None:
    document = await _document(hub)
    async with asyncio.timeout(30):
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "401" not in operation["responses"] or "{" in path:
                    continue
                headers = operation["responses"]["401"]["headers"]
                assert headers["WWW-Authenticate"]["required"] is True
                if "security" not in operation:  # login and refresh: a body comes first
                    continue
                response = await hub.http.request(method.upper(), path, json={})
                assert response.status_code == 401, (method, path)
                assert response.headers["www-authenticate"] == "Bearer"


async def test_events_history_and_messages_query_match_the_server(hub: RunningHub) -> None:
    document = await _document(hub)
    assert "404" in document["paths"]["/api/v1/events"]["get"]["responses"]
    before = _parameter(document, "/api/v1/chats/{chat_id}/messages", "get", "before_id")["schema"]
    assert before["type"] == "integer" and "anyOf" not in before and "default" not in before


async def test_links_name_real_operations_and_parameters(hub: RunningHub) -> None:
    document = await _document(hub)
    operations = {op["operationId"]: op for ops in document["paths"].values() for op in ops.values()}
    links = [(name, link) for ops in document["paths"].values() for op in ops.values()
             for answer in op["responses"].values() for name, link in answer.get("links", {}).items()]
    assert len(links) >= 6
    for name, link in links:
        target = operations[link["operationId"]]
        names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
        assert set(link["parameters"]) == names, name
        if "requestBody" in link:
            assert "requestBody" in target, name


async def test_every_call_that_reads_the_database_documents_503(hub: RunningHub) -> None:
    """A database connection lost under a call is a 503 with Retry-After (hub.errors); only
    the calls that never touch the database leave it out."""
    document = await _document(hub)
    without = {("/healthz", "get"), ("/metrics", "get"), ("/api/openapi.json", "get"),
               ("/api/v1/push/key", "get"),  # the VAPID key is read once, at start-up
               ("/api/asyncapi.json", "get")}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert ("503" in operation["responses"]) == ((path, method) not in without), (method, path)
