"""docs/protocol.md against the code: every REST call, frame type, close code, event, error code
and setting exists on both sides or on neither. Pure and fast: the app is built, never started.

What the test reads in docs/protocol.md (keep these conventions when editing it):
- a call is a table row whose first cell is `` `METHOD /path` `` (a path parameter written
  `{anything}`, a query string allowed after `?`); `GET /ws` stands for the WebSocket upgrade;
- frame types are the first cells (`` `ping` ``) of the tables under the headings
  "Client frames" and "Server frames"; close codes the rows (`` | `4001` | AUTH_FAILED | hub |
  ``) of the table under "Close codes", compared with `hub.close_codes.CloseCode` (name, sender,
  and a "client should" cell starting with "terminal" exactly for the terminal codes); event names
  the first cells of the table under "5. Events the hub produces"; error codes the second cells
  of the table under "2. Errors";
- settings: the one list is the README's configuration table (rows `` | `NAME` | ``), which
  the document links to; every `` `UPPER_SNAKE` `` name in the document outside its "Planned"
  section must be a setting the hub reads;
- a call or event whose first cell is followed by *(landing)* (`` | `POST /x` *(landing)* | ``)
  describes work being merged from other branches: it is accepted only while it is listed in a
  PENDING_* set below, and a pending item that the code now has fails the test, so that the set
  and the marks are emptied once the work landed. Settings the document names may be pending
  too (PENDING_SETTINGS); *(landing)* elsewhere in a row or paragraph is for the reader only.

Event names are the declared events the app collects from its features (`hub.events.EventType`).
Frame types have no enumeration yet; they are collected from the code's syntax tree, as noted
per helper.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from starlette.routing import Mount, Route, WebSocketRoute

from hub import errors, ws
from hub.app import create_app
from hub.close_codes import CloseAction, CloseCode, SentBy
from hub.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
README = ROOT / "README.md"

# Documented, marked *(landing)*, and not in this branch's code yet: issue 13's work on other
# branches. The coordinator empties these sets (and removes the marks) after merging that work.
PENDING_CALLS: frozenset[tuple[str, str]] = frozenset()
PENDING_EVENTS: frozenset[str] = frozenset()
PENDING_SETTINGS: frozenset[str] = frozenset()

CALL_ROW = re.compile(r"^\|\s*`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)[^`]*`", re.MULTILINE)
LANDING_CELL = re.compile(r"^\|\s*`([^`]+)`\s*\*\(landing\)\*\s*\|", re.MULTILINE)
FIRST_CELL = re.compile(r"^\|\s*`([^`]+)`\s*(?:\*\(landing\)\*\s*)?\|", re.MULTILINE)
SETTING_NAME = re.compile(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`")
README_SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)` \|", re.MULTILINE)
PARAMETER = re.compile(r"\{[^}]*\}")


def _source(relative: str) -> str:
    return (ROOT / relative).read_text()


def _tree(relative: str) -> ast.Module:
    return ast.parse(_source(relative), relative)


def _doc() -> str:
    return DOC.read_text()


def _section(heading: str) -> str:
    """The text under the heading whose title starts with `heading`, up to the next heading of
    the same or a higher level."""
    lines = _doc().splitlines()
    for start, line in enumerate(lines):
        match = re.match(r"^(#+) (.*)$", line)
        if match and match.group(2).startswith(heading):
            level = len(match.group(1))
            end = next((i for i in range(start + 1, len(lines))
                        if re.match(rf"^#{{1,{level}}} ", lines[i])), len(lines))
            return "\n".join(lines[start + 1:end])
    raise AssertionError(f"docs/protocol.md has no heading starting with {heading!r}")


def _first_cells(text: str) -> set[str]:
    return set(FIRST_CELL.findall(text))


# calls


def _template(path: str) -> str:
    return PARAMETER.sub("{}", path)


def _code_calls() -> set[tuple[str, str]]:
    """Method and path template of every route of the app (dev mode, SQLite, lifespan never
    started), HEAD left out (it follows GET), plus the WebSocket upgrade, which the hub's own
    protocol (`hub.ws`) answers outside the router."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", jwt_secret="k" * 32))
    calls = {("GET", ws.PATH)}
    for route in app.routes:
        if isinstance(route, Mount):  # static files, if ever mounted
            continue
        if isinstance(route, WebSocketRoute):
            calls.add(("GET", _template(route.path)))
        elif isinstance(route, Route):
            methods = set(route.methods or ()) - {"HEAD"}
            calls.update((method, _template(route.path)) for method in methods)
    return calls


def _doc_calls() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """Every documented call, and those of them marked *(landing)*."""
    documented: set[tuple[str, str]] = set()
    landing: set[tuple[str, str]] = set()
    for line in _doc().splitlines():
        match = CALL_ROW.match(line)
        if match:
            call = (match.group(1), _template(match.group(2)))
            documented.add(call)
            if LANDING_CELL.match(line):
                landing.add(call)
    return documented, landing


def test_every_call_is_documented_and_every_documented_call_exists() -> None:
    code = _code_calls()
    documented, landing = _doc_calls()
    assert code - documented == set(), "add these calls to docs/protocol.md (a row `METHOD /path`)"
    assert documented - code - PENDING_CALLS == set(), "docs/protocol.md documents calls the hub lacks"
    assert PENDING_CALLS & code == set(), "these calls landed: remove them from PENDING_CALLS and " \
                                          "their *(landing)* mark in docs/protocol.md"
    assert landing == PENDING_CALLS, "the calls marked *(landing)* must be exactly PENDING_CALLS"


# frame types


def _type_names(tree: ast.Module) -> set[str]:
    """Names assigned from an expression that reads `<frame>.get("type")` (`kind = ...`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(_reads_type(n) for n in ast.walk(node.value)):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _reads_type(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get" and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant) and node.args[0].value == "type")


def _compared_types(tree: ast.Module) -> set[str]:
    """String literals compared with a frame's `type` (`frame.get("type") != "auth"`, `kind == "ping"`)."""
    names = _type_names(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if any(_reads_type(s) or (isinstance(s, ast.Name) and s.id in names) for s in sides):
            found.update(s.value for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str))
    return found


def _written_types(tree: ast.Module) -> set[str]:
    """`type` values of dict literals (`{"type": "welcome", ...}`) and of prebuilt JSON byte
    strings (`b'{"type":"pong"}'`, the event frame's prefix)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (isinstance(key, ast.Constant) and key.value == "type"
                        and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    found.add(value.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, bytes):
            found.update(t.decode() for t in re.findall(rb'"type":\s*"([a-z_]+)"', node.value))
    return found


def test_every_frame_type_is_documented_and_every_documented_type_exists() -> None:
    hub_trees = [_tree("hub/ws_socket.py"), _tree("hub/ws_frames.py"), _tree("hub/connection.py")]
    server = set().union(*(_written_types(tree) for tree in hub_trees))
    client = set().union(*(_compared_types(tree) for tree in hub_trees))
    # features' signals (frames they send through hub.signals) and the client frames they answer
    server |= _written_types(_tree("chat/live.py"))
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", jwt_secret="k" * 32))
    client |= set(app.state.websocket_protocol.__self__.client_frames)
    assert server >= {"welcome", "event", "pong"} and client >= {"auth", "ping"}, \
        "the frame types are no longer found where this test looks: update the helpers"
    assert _first_cells(_section("Server frames")) == server, "docs/protocol.md § Server frames"
    assert _first_cells(_section("Client frames")) == client, "docs/protocol.md § Client frames"

    # The bundled clients know no type the hub does not.
    python_client = _tree("hub/client.py")
    assert _written_types(python_client) <= client
    assert _compared_types(python_client) <= server
    js = _source("hub/static/hub-client.js")
    assert set(re.findall(r'\btype: "([a-z_]+)"', js)) <= client
    assert set(re.findall(r'^\s*case "([a-z_]+)":', js, re.MULTILINE)) <= server


# close codes


def _doc_close_codes() -> dict[int, tuple[str, str, str]]:
    """Every documented close code: its name, "sent by" and "client should" cells."""
    rows = {}
    for line in _section("Close codes").splitlines():
        match = re.match(r"^\|\s*`(\d{4})`\s*\|\s*([A-Z_]+)\s*\|([^|]*)\|[^|]*\|([^|]*)\|", line)
        if match:
            rows[int(match.group(1))] = (match.group(2), match.group(3).strip(), match.group(4).strip())
    return rows


def test_every_close_code_is_documented_and_every_documented_code_is_in_the_enumeration() -> None:
    documented = _doc_close_codes()
    assert {4001, 4003, 4008, 4009, 1009, 1011, 1012} <= set(documented), \
        "the close codes are no longer found where this test looks: update _doc_close_codes"
    assert set(documented) == set(CloseCode), "docs/protocol.md § Close codes: one row per CloseCode"
    for code in CloseCode:
        name, sent_by, should = documented[code]
        assert (name, sent_by) == (code.name, code.sent_by.value), f"docs/protocol.md § Close codes: {code}"
        assert should.startswith("terminal") == (code.action is CloseAction.TERMINAL), \
            f"docs/protocol.md § Close codes: what a client should do on {code}"
    hub_sent = {code for code in CloseCode if code.sent_by is SentBy.HUB}
    assert {4001, 4003, 4008, 4009, 4010, 1009, 1011, 1012} <= hub_sent


# events


def _declared_events() -> dict[str, str]:
    """The events the features declare (`Feature.events`), as the app collects them: to whom
    each goes, by name."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:", jwt_secret="k" * 32))
    return {name: event.recipients for name, event in app.state.event_types.items()}


def test_every_event_is_documented_and_every_documented_event_is_declared() -> None:
    emitted = _declared_events()
    assert {"chat.message", "parse.completed"} <= emitted.keys(), \
        "events are no longer found where this test looks"
    section = _section("5. Events the hub produces")
    documented = _first_cells(section)
    landing = set(LANDING_CELL.findall(section))
    assert emitted.keys() - documented == set(), "add these events to docs/protocol.md §5"
    assert documented - emitted.keys() - PENDING_EVENTS == set(), \
        "docs/protocol.md §5 lists events nothing declares"
    assert PENDING_EVENTS & emitted.keys() == set(), "these events landed: empty PENDING_EVENTS and the marks"
    assert landing == PENDING_EVENTS, "the events marked *(landing)* must be exactly PENDING_EVENTS"
    to_whom = dict(re.findall(r"^\|\s*`([^`]+)`[^|]*\|\s*([^|]*?)\s*\|", section, re.MULTILINE))
    for name, recipients in emitted.items():
        assert to_whom[name] == recipients, f"docs/protocol.md §5, to whom {name} goes: the declaration says"


# error codes


def test_every_error_code_is_documented() -> None:
    classes, codes = [errors.ApiError], set()
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    codes.update(errors._HTTP_CODES.values())
    codes.update(re.findall(r'"error": "([a-z_]+)"', _source("hub/errors.py")))
    documented = set(re.findall(r"^\|\s*\d{3}\s*\|\s*`([a-z_]+)`", _section("2. Errors"), re.MULTILINE))
    assert documented == codes, "docs/protocol.md §2: one row per error code of hub/errors.py"


# settings


def _settings_read() -> set[str]:
    """Environment variables hub/settings.py reads: the first argument of its reader's calls
    (`r.integer("WS_RATE_BURST", ...)`)."""
    return {node.args[0].value for node in ast.walk(_tree("hub/settings.py"))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*", node.args[0].value)}


def test_the_settings_list_is_the_readme_table_and_names_every_setting() -> None:
    read = _settings_read()
    assert {"HUB_ENV", "DATABASE_URL", "WS_RATE_LIMIT"} <= read, \
        "settings are no longer found where this test looks"
    listed = set(README_SETTING_ROW.findall(_section_of(README, "Configuration")))
    assert read - listed == set(), "add these settings to the README's configuration table"
    assert listed - read == set(), "the README's configuration table lists variables the hub does not read"
    assert "../README.md#configuration" in _section("10. Operations and configuration"), \
        "docs/protocol.md §10 must point to the README's configuration table"


def test_every_setting_the_document_names_is_read_by_the_hub() -> None:
    doc = _doc()
    planned = _section("Planned")
    named = set(SETTING_NAME.findall(doc.replace(planned, "")))
    read = _settings_read()
    assert named - read - PENDING_SETTINGS == set(), "docs/protocol.md names settings the hub does not read"
    assert PENDING_SETTINGS & read == set(), "these settings landed: remove them from PENDING_SETTINGS"
    assert named >= PENDING_SETTINGS, "every pending setting is described in docs/protocol.md"


def _section_of(path: Path, heading: str) -> str:
    text = path.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


# links


def test_the_readme_points_to_the_protocol_and_no_link_leaves_the_repository() -> None:
    for path in (README, DOC):
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#", 1)[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
            assert resolved.exists(), f"{path.name} links to a missing file: {target}"
    assert "](docs/protocol.md)" in README.read_text()
