"""Operations endpoints: liveness, readiness, metrics, and the OpenAPI and AsyncAPI documents."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.broker import Broker
from hub.db import Database
from hub.http import api
from hub.metrics import Metrics
from hub.responses import json_response

READY_TIMEOUT = 2.0


class Status(BaseModel):
    status: str


class OpsApi:
    """Liveness, readiness (database and broker, each bounded by READY_TIMEOUT), Prometheus
    metrics, the OpenAPI document of the REST calls and the AsyncAPI document of the WebSocket
    (each built once, on first request)."""

    def __init__(self, db: Database, broker: Broker, metrics: Metrics,
                 openapi: Callable[[], dict[str, Any]],
                 asyncapi: Callable[[], dict[str, Any]]) -> None:
        self._db = db
        self._broker = broker
        self._metrics = metrics
        self._openapi = openapi
        self._openapi_doc: dict[str, Any] | None = None
        self._asyncapi = asyncapi
        self._asyncapi_doc: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/api/openapi.json", self.openapi, methods=["GET"]),
            Route("/api/asyncapi.json", self.asyncapi, methods=["GET"]),
        ]

    @api(summary="Liveness: 200 while the process lives", tag="ops", response=Status,
         uses_database=False)
    async def healthz(self, _request: Request) -> Response:
        return json_response({"status": "ok"})

    @api(summary="Readiness: 503 naming the database or broker that is down", tag="ops",
         response=Status, errors=(503,))
    async def readyz(self, _request: Request) -> Response:
        checks = {"database": self._db.ping, f"broker ({self._broker.name})": self._broker.ping}
        results = await asyncio.gather(*(_bounded(check) for check in checks.values()),
                                       return_exceptions=True)
        down = [name for name, result in zip(checks, results, strict=True) if result is not None]
        if down:
            return json_response({"error": "unavailable", "detail": f"down: {', '.join(down)}"}, 503)
        return json_response({"status": "ready"})

    @api(summary="Prometheus metrics of this process", tag="ops", content_type="text/plain",
         uses_database=False)
    async def metrics(self, _request: Request) -> Response:
        return Response(self._metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api(summary="This document", tag="ops", uses_database=False)
    async def openapi(self, _request: Request) -> Response:
        if self._openapi_doc is None:
            self._openapi_doc = self._openapi()
        return json_response(self._openapi_doc)

    @api(summary="The AsyncAPI 3 document of the WebSocket /ws: frames, events, close codes",
         tag="ops", uses_database=False)
    async def asyncapi(self, _request: Request) -> Response:
        if self._asyncapi_doc is None:
            self._asyncapi_doc = self._asyncapi()
        return json_response(self._asyncapi_doc)


async def _bounded(check: Callable[[], Awaitable[None]]) -> None:
    async with asyncio.timeout(READY_TIMEOUT):
        await check()
