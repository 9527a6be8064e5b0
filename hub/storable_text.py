"""Which text the hub can store: the one definition every feature uses.

PostgreSQL's text and JSON types cannot hold U+0000, and no UTF-8 store (asyncpg encodes to
UTF-8) can hold a lone surrogate (U+D800-U+DFFF, which JSON can spell as `"\\ud800"`).
SQLite takes both, so the rule is applied on every backend: what works in development
must not fail in production.

Two treatments, by where the text comes from:

- a client's own request (a REST body) is refused: `StorableText` and `StorableJsonObject` in
  the pydantic models make a 422 naming the field, and `unstorable_json_path` names the field
  of a body whose lone surrogate the JSON parser itself refused;
- text from third parties (fetched pages and titles, a parser's or a service's answer) is made
  storable with `clean` / `clean_json`: NUL removed, lone surrogates replaced by U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def unstorable_reason(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters (U+0000)"
    return "must not contain lone surrogates (U+D800 to U+DFFF)"


def clean(text: str) -> str:
    """`text` made storable: NUL removed, each lone surrogate replaced by U+FFFD."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _SURROGATE.sub(REPLACEMENT, text.replace("\x00", ""))


def clean_json(value: Any) -> Any:
    """A decoded JSON value with every string, keys included, `clean`ed."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    return value


def unstorable_json_path(value: Any, path: str = "") -> tuple[str, str] | None:
    """`(path, reason)` of the first string or key in a decoded JSON value that cannot be
    stored (the path dotted as in a 422's field names, e.g. `data.items.0`), else None."""
    if isinstance(value, str):
        reason = unstorable_reason(value)
        return None if reason is None else (path or "body", reason)
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{path}.{clean(key)}" if path else clean(key)
            reason = unstorable_reason(key)
            if reason is not None:
                return inner, f"key {reason}"
            if (found := unstorable_json_path(item, inner)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := unstorable_json_path(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def loads_allowing_surrogates(raw: bytes) -> Any:
    """Decode JSON that may spell lone surrogates (which the strict parsers refuse), so they
    can be named or cleaned; raises ValueError for anything that is not JSON (or is nested
    too deeply to decode)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def may_spell_surrogates(raw: bytes) -> bool:
    """Cheap test whether a JSON text could contain an escaped surrogate (`\\ud800`...)."""
    return b"\\ud" in raw or b"\\uD" in raw


def _refuse_text(text: str) -> str:
    reason = unstorable_reason(text)
    if reason is not None:
        raise PydanticCustomError("unstorable_text", reason)
    return text


def _refuse_in_json(value: dict[str, Any]) -> dict[str, Any]:
    found = unstorable_json_path(value)
    if found is not None:
        where, reason = found
        raise PydanticCustomError("unstorable_text", "{where}: {reason}",
                                  {"where": where, "reason": reason})
    return value


StorableText = Annotated[str, AfterValidator(_refuse_text)]
"""A string a client sends that must be storable as is (a 422 otherwise)."""

StorableJsonObject = Annotated[dict[str, Any], AfterValidator(_refuse_in_json)]
"""A JSON object a client sends whose strings and keys, at any depth, must be storable."""
