"""The page and its static files over plain HTTP: content types and the security headers."""

from __future__ import annotations

import re

import pytest

from hub.web import STATIC_DIR, STATIC_FILES
from tests.conftest import RunningHub


@pytest.fixture
def backend() -> str:
    return "sqlite"  # these tests read files and headers: one backend is enough


def directives(policy: str) -> dict[str, str]:
    return {part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2] for part in policy.split(";")}


async def test_page_is_served_with_a_policy_that_forbids_inline_script(hub: RunningHub) -> None:
    answer = await hub.http.get("/")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert 'data-testid="connection-status"' in answer.text
    policy = directives(answer.headers["content-security-policy"])
    assert policy["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["base-uri"] == "'none'"
    host = hub.base_url.removeprefix("http://")
    assert policy["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    # The page itself carries no inline script or handler for the policy to block.
    assert not re.search(r"<script(?![^>]*\bsrc=)", answer.text)
    assert not re.search(r"\son[a-z]+=", answer.text)


@pytest.mark.parametrize("name", sorted(STATIC_FILES))
async def test_every_static_file_is_served_with_its_type(hub: RunningHub, name: str) -> None:
    answer = await hub.http.get(f"/static/{name}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == STATIC_FILES[name]
    assert answer.content == (STATIC_DIR / name).read_bytes()
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in answer.headers["content-security-policy"]


async def test_every_module_the_page_imports_is_served() -> None:
    """A module import the whitelist misses would only fail in the browser: check it here."""
    shipped = {path.name for path in STATIC_DIR.iterdir()}
    assert shipped == set(STATIC_FILES) | {"index.html", "sw.js"}  # sw.js is served at /sw.js
    for script in STATIC_DIR.glob("*.js"):
        for imported in re.findall(r'^import .* from "\./([^"]+)";$', script.read_text(), re.M):
            assert imported in STATIC_FILES, f"{script.name} imports {imported}, which is not served"


@pytest.mark.parametrize("path", [
    "/static/missing.js", "/static/..%2Fweb.py", "/static/%2e%2e/settings.py", "/static/index.html.bak",
    "/static/", "/static/app.js/x",
])
async def test_anything_else_under_static_is_a_404_in_the_error_shape(hub: RunningHub, path: str) -> None:
    answer = await hub.http.get(path)
    assert answer.status_code == 404
    assert answer.json()["error"] == "not_found"


async def test_head_and_a_hostile_host_header(hub: RunningHub) -> None:
    head = await hub.http.head("/static/app.js")
    assert head.status_code == 200
    assert head.content == b""
    # A Host that could smuggle a directive is not repeated in the policy.
    hostile = await hub.http.get("/", headers={"Host": "evil.example; script-src *"})
    assert hostile.status_code == 200
    policy = directives(hostile.headers["content-security-policy"])
    assert policy["connect-src"] == "'self'"
    assert policy["script-src"] == "'self'"


async def test_writing_to_the_page_is_not_allowed(hub: RunningHub) -> None:
    answer = await hub.http.post("/", content=b"{}")
    assert answer.status_code == 405
    assert answer.json()["error"] == "method_not_allowed"
