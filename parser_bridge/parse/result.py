"""The wire format between the hub and a parser (protocol §7, compatible with seed 001).

Jobs: `LPUSH {prefix}parser:tasks {"id": <request_id>, "url": "...", "user_id": <user>}`
(`user_id` is this hub's addition, for fairness between users; seed 001's parser ignores it).
Results: `SET {prefix}parser:results:{id} {"status": "success", "title", "html"}` or
`{"status": "failure", "error"}`, or the same object in `PUT /api/v1/parse/{id}/result`.
`prefix` is `REDIS_CHANNEL_PREFIX` (empty in production), so test runs do not share keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.storable_text import StorableText, clean, clean_json, loads_allowing_surrogates

MAX_TITLE_CHARS = 1000
MAX_ERROR_CHARS = 1000
MAX_HTML_CHARS = 5 * 1024 * 1024


def tasks_key(prefix: str) -> str:
    return f"{prefix}parser:tasks"


def result_key(prefix: str, request_id: int) -> str:
    return f"{prefix}parser:results:{request_id}"


def encode_job(request_id: int, url: str, user_id: int) -> bytes:
    return orjson.dumps({"id": request_id, "url": url, "user_id": user_id})


class ParseJob(BaseModel):
    """One job as the hub pushes it; unknown fields are ignored for compatibility, and a job
    without `user_id` (an older hub's) is nobody's in particular."""

    id: int
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    user_id: int | None = None


class ParseResult(BaseModel):
    """A parser's answer. Long titles and errors are cut, not refused: the user still gets one.
    A `success` needs `html` (it may be empty); a `failure` needs `error`.

    Validated as is (REST), text the database cannot store is refused (422); `success`,
    `failure` and `from_queue` clean it instead, for the page came from a third party."""

    # What `_complete` requires, for the OpenAPI document.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"status": {"const": "success"}, "html": {"type": "string"}},
         "required": ["html"]},
        {"properties": {"status": {"const": "failure"}, "error": {"type": "string", "minLength": 1}},
         "required": ["error"]},
    ]})

    status: Literal["success", "failure"]
    title: StorableText | None = None
    html: Annotated[StorableText | None, Field(max_length=MAX_HTML_CHARS)] = None
    error: StorableText | None = None

    @field_validator("title")
    @classmethod
    def _cut_title(cls, value: str | None) -> str | None:
        return None if value is None else value[:MAX_TITLE_CHARS]

    @field_validator("error")
    @classmethod
    def _cut_error(cls, value: str | None) -> str | None:
        return None if value is None else value[:MAX_ERROR_CHARS]

    @model_validator(mode="after")
    def _complete(self) -> ParseResult:
        if self.status == "success":
            if self.html is None:
                raise ValueError("a success needs html (use an empty string for an empty page)")
            self.error = None
        else:
            if not self.error:
                raise ValueError("a failure needs a non-empty error")
            self.title = None
            self.html = None
        return self

    @classmethod
    def success(cls, title: str | None, html: str) -> ParseResult:
        return cls(status="success", title=None if title is None else clean(title), html=clean(html))

    @classmethod
    def failure(cls, error: str) -> ParseResult:
        return cls(status="failure", error=clean(error))

    @classmethod
    def from_queue(cls, raw: bytes) -> ParseResult:
        """A result as a parser stored it in `parser:results:{id}`, its text cleaned (a
        parser written in Python spells a lone surrogate of a page as `\\ud800`); raises
        ValueError (a pydantic ValidationError among them) when it is not a result."""
        try:
            return cls.model_validate(clean_json(loads_allowing_surrogates(raw)))
        except RecursionError:
            raise ValueError("the result is nested too deeply") from None

    def encode(self) -> bytes:
        if self.status == "success":
            return orjson.dumps({"status": "success", "title": self.title, "html": self.html})
        return orjson.dumps({"status": "failure", "error": self.error})
