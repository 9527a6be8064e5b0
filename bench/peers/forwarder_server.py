"""The Python ceiling: one PSUBSCRIBE `notifications:*` per process, a dict of sockets by user,
and each payload sent as it comes. No store, no ordering checks, no queues: nothing a hub adds.

    python bench/peers/forwarder_server.py --port 8001 --redis redis://127.0.0.1:6379/0 --secret S
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.peers.common import arguments, authenticate, serve

PREFIX = b"notifications:"


def build(redis_url: str, secret: str) -> Starlette:
    sockets: dict[int, set[WebSocket]] = {}

    async def forward() -> None:
        client = aioredis.from_url(redis_url)
        pubsub = client.pubsub()
        await pubsub.psubscribe("notifications:*")
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            targets = sockets.get(int(message["channel"][len(PREFIX):]))
            if not targets:
                continue
            text = message["data"].decode()
            for websocket in list(targets):
                with contextlib.suppress(Exception):
                    await websocket.send_text(text)

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        user_id = await authenticate(websocket, secret)
        if user_id is None:
            return
        sockets.setdefault(user_id, set()).add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            mine = sockets.get(user_id)
            if mine is not None:
                mine.discard(websocket)
                if not mine:
                    del sockets[user_id]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(forward())
        yield
        task.cancel()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)


if __name__ == "__main__":
    args = arguments("minimal one-PSUBSCRIBE forwarder")
    serve(build(args.redis, args.secret), args.port)
