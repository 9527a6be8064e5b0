"""The wire format between the hub and a parser (protocol §7, compatible with seed 001).

Jobs: `LPUSH {prefix}parser:tasks {"id": <request_id>, "url": "..."}`.
Results: `SET {prefix}parser:results:{id} {"status": "success", "title", "html"}` or
`{"status": "failure", "error"}`, or the same object in `PUT /api/v1/parse/{id}/result`.
`prefix` is `REDIS_CHANNEL_PREFIX` (empty in production), so test runs do not share keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TITLE_CHARS = 1000
MAX_ERROR_CHARS = 1000
MAX_HTML_CHARS = 5 * 1024 * 1024


def tasks_key(prefix: str) -> str:
    return f"{prefix}parser:tasks"


def result_key(prefix: str, request_id: int) -> str:
    return f"{prefix}parser:results:{request_id}"


def encode_job(request_id: int, url: str) -> bytes:
    return orjson.dumps({"id": request_id, "url": url})


class ParseJob(BaseModel):
    """One job as the hub pushes it; unknown fields are ignored for compatibility."""

    id: int
    url: Annotated[str, Field(min_length=1, max_length=2048)]


class ParseResult(BaseModel):
    """A parser's answer. Long titles and errors are cut, not refused: the user still gets one.
    A `success` needs `html` (it may be empty); a `failure` needs `error`."""

    # What `_complete` requires, for the OpenAPI document.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"status": {"const": "success"}, "html": {"type": "string"}},
         "required": ["html"]},
        {"properties": {"status": {"const": "failure"}, "error": {"type": "string", "minLength": 1}},
         "required": ["error"]},
    ]})

    status: Literal["success", "failure"]
    title: str | None = None
    html: Annotated[str | None, Field(max_length=MAX_HTML_CHARS)] = None
    error: str | None = None

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
        return cls(status="success", title=title, html=html)

    @classmethod
    def failure(cls, error: str) -> ParseResult:
        return cls(status="failure", error=error)

    def encode(self) -> bytes:
        if self.status == "success":
            return orjson.dumps({"status": "success", "title": self.title, "html": self.html})
        return orjson.dumps({"status": "failure", "error": self.error})
