"""The close codes (`hub.close_codes`): the enumeration's rule for unknown codes, the hub closing
only with its members, and the browser client's table and decisions agreeing with it. Pure and
fast: source files are read, and the browser module is run by node when it is installed."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hub.close_codes import RECONNECT_RANGE, TERMINAL_RANGE, CloseAction, CloseCode, SentBy, action_for

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "hub" / "static" / "hub-client.js"


def _js_block(start: str) -> str:
    match = re.search(re.escape(start) + r"(.*?)[)\]]\)?;", JS.read_text(), re.DOTALL)
    assert match is not None, f"hub-client.js: {start!r} moved; update this test"
    return match.group(1)


def test_codes_added_from_now_on_follow_the_ranges() -> None:
    assert (RECONNECT_RANGE.start, RECONNECT_RANGE.stop) == (4000, 4500)
    assert (TERMINAL_RANGE.start, TERMINAL_RANGE.stop) == (4500, 5000)
    for code in CloseCode:
        if code >= 4010:  # 4000-4009 are fixed by the contract, each with its own action
            expected = CloseAction.TERMINAL if code in TERMINAL_RANGE else CloseAction.RECONNECT
            assert code.action is expected, f"{code!r} is in the range of another action"
    assert len(CloseCode.__members__) == len(CloseCode), "one meaning per code: no aliases"
    assert {code.value for code in CloseCode if code.sent_by is SentBy.HUB} >= {4001, 4003, 4008, 4009, 4010}


@pytest.mark.parametrize(("code", "action"), [
    (4001, CloseAction.REFRESH), (4003, CloseAction.TERMINAL), (4009, CloseAction.RECONNECT),
    (1007, CloseAction.TERMINAL), (1009, CloseAction.TERMINAL), (1011, CloseAction.RECONNECT),
    (4010, CloseAction.RECONNECT), (4011, CloseAction.RECONNECT), (4499, CloseAction.RECONNECT),
    (4500, CloseAction.TERMINAL), (4999, CloseAction.TERMINAL), (1013, CloseAction.RECONNECT),
    (3000, CloseAction.RECONNECT),
])
def test_action_for_known_and_unknown_codes(code: int, action: CloseAction) -> None:
    assert action_for(code) is action


def test_the_hub_closes_only_with_named_codes() -> None:
    """Every close the hub's socket makes (`_close`, `send_close`, `fail`, or `_close` handed to a
    timer) names a `CloseCode` member; every code the hub sends is named somewhere in hub/
    (1002 aside: websockets sends it by itself for a frame breaking RFC 6455)."""
    named: set[str] = set()
    for path in sorted((ROOT / "hub").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "CloseCode"):
                named.add(node.attr)
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            codes = [node.args[0]] if name in ("_close", "send_close", "fail") and node.args else []
            codes += [after for before, after in zip(node.args, node.args[1:], strict=False)
                      if isinstance(before, ast.Attribute) and before.attr == "_close"]
            for code in codes:
                member = (isinstance(code, ast.Attribute) and isinstance(code.value, ast.Name)
                          and code.value.id == "CloseCode")
                handed_on = isinstance(code, ast.Name) and code.id.islower()  # `_close`'s own parameter
                assert member or handed_on, \
                    f"{path.name}:{code.lineno} closes with {ast.unparse(code)}: use a CloseCode member"
    sent = {code.name for code in CloseCode if code.sent_by is SentBy.HUB}
    assert sent - named == {"PROTOCOL_ERROR"}


def test_the_browser_table_is_the_enumeration() -> None:
    table = dict(re.findall(r"\b([A-Z_]+):\s*(\d{4})\b", _js_block("CloseCode = Object.freeze({")))
    assert {name: int(code) for name, code in table.items()} == {code.name: code.value for code in CloseCode}
    terminal = set(re.findall(r"CloseCode\.([A-Z_]+)", _js_block("TERMINAL_CLOSE_CODES = new Set([")))
    assert terminal == {code.name for code in CloseCode if code.action is CloseAction.TERMINAL}
    refresh = set(re.findall(r"CloseCode\.([A-Z_]+)", _js_block("REFRESH_CLOSE_CODES = new Set([")))
    assert refresh == {code.name for code in CloseCode if code.action is CloseAction.REFRESH}
    bounds = re.search(r"TERMINAL_RANGE = \[(\d+), (\d+)\]", JS.read_text())
    assert bounds is not None and range(int(bounds[1]), int(bounds[2]) + 1) == TERMINAL_RANGE


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_browser_client_decides_like_the_enumeration_for_every_code() -> None:
    script = ("import(process.argv[1]).then((m) => { const kinds = {};"
              " for (let c = 1000; c < 5000; c++) kinds[c] = m.closeKind(c);"
              " console.log(JSON.stringify(kinds)); });")
    done = subprocess.run(["node", "-e", script, JS.as_uri()], capture_output=True, text=True,
                          timeout=30, check=True)
    kinds = {int(code): kind for code, kind in json.loads(done.stdout).items()}
    assert kinds == {code: action_for(code).value for code in range(1000, 5000)}
