"""A Web Push service stand-in (RFC 8030) on 127.0.0.1 over HTTPS, for the hub's push tests.

It hands out subscriptions (a P-256 key pair and an auth secret per endpoint, as a browser
makes them), checks every push's VAPID `Authorization` (RFC 8292: the JWT's signature, its
`aud` and `exp`, and that the key is the hub's), decrypts the `aes128gcm` body with the
subscription's private key (RFC 8291) and answers the statuses a test queued, 201 otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece
import orjson
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.certs import self_signed
from tests.conftest import free_port


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Subscription:
    endpoint: str
    key: ec.EllipticCurvePrivateKey
    auth: bytes
    statuses: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # answers to give first

    def json(self) -> dict[str, Any]:
        public = self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": self.endpoint, "keys": {"p256dh": b64(public), "auth": b64(self.auth)}}


@dataclass
class Push:
    endpoint: str
    status: int
    headers: dict[str, str]
    payload: dict[str, Any]
    at: float


class PushService:
    def __init__(self, vapid_public_key: str) -> None:
        self.vapid_public_key = vapid_public_key
        self.subscriptions: dict[str, Subscription] = {}
        self.received: list[Push] = []  # every request, whatever was answered
        self.base_url = ""
        self.hold = 0.0  # seconds each answer is held back
        self.open_requests = 0
        self.most_open = 0  # the most requests open at once

    def subscribe(self) -> Subscription:
        endpoint = f"{self.base_url}/push/{secrets.token_urlsafe(12)}"
        sub = Subscription(endpoint, ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self.subscriptions[endpoint] = sub
        return sub

    def accepted(self, sub: Subscription | None = None) -> list[Push]:
        return [p for p in self.received
                if p.status == 201 and (sub is None or p.endpoint == sub.endpoint)]

    async def wait_accepted(self, count: int, sub: Subscription | None = None,
                            timeout: float = 20.0) -> list[Push]:
        async with asyncio.timeout(timeout):
            while len(self.accepted(sub)) < count:
                await asyncio.sleep(0.05)
        return self.accepted(sub)

    async def receive(self, request: Request) -> Response:
        endpoint = f"{self.base_url}{request.url.path}"
        sub = self.subscriptions.get(endpoint)
        if sub is None:
            return Response(status_code=404)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self._check_vapid(headers.get("authorization", ""))
        assert headers["content-encoding"] == "aes128gcm", headers
        assert int(headers["ttl"]) > 0, headers
        body = await request.body()
        payload = orjson.loads(http_ece.decrypt(body, private_key=sub.key, auth_secret=sub.auth,
                                                version="aes128gcm"))
        status, extra = sub.statuses.pop(0) if sub.statuses else (201, {})
        self.open_requests += 1
        self.most_open = max(self.most_open, self.open_requests)
        try:
            await asyncio.sleep(self.hold)
        finally:
            self.open_requests -= 1
        self.received.append(Push(endpoint, status, headers, payload, time.monotonic()))
        return Response(status_code=status, headers=extra)

    def _check_vapid(self, authorization: str) -> None:
        assert Vapid02.verify(authorization), authorization  # the JWT's ES256 signature by k
        parts = dict(part.split("=", 1) for part in authorization.split(" ", 1)[1].split(","))
        assert parts["k"] == self.vapid_public_key, "signed with another key than the hub's"
        claims = orjson.loads(base64.urlsafe_b64decode(parts["t"].split(".")[1] + "=="))
        assert claims["aud"] == self.base_url, claims
        assert time.time() < claims["exp"] <= time.time() + 24 * 3600, claims
        assert claims["sub"].startswith(("mailto:", "https:")), claims


@contextlib.asynccontextmanager
async def serve_push_service(directory: Path,
                             vapid_public_key: str) -> AsyncIterator[tuple[PushService, Path]]:
    """The stand-in on https://localhost:<port>; yields it and its certificate (the CA to trust)."""
    cert, key = self_signed(directory)
    service = PushService(vapid_public_key)
    port = free_port()
    service.base_url = f"https://localhost:{port}"
    app = Starlette(routes=[Route("/push/{token}", service.receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, ssl_certfile=str(cert),
                                           ssl_keyfile=str(key)))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    try:
        yield service, cert
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
