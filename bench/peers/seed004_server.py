"""The pattern of seed 004, kept as it is: every socket opens its own Redis connection and
SUBSCRIBE, then polls `get_message()` and sleeps one second between polls. The floor.

    python bench/peers/seed004_server.py --port 8003 --redis redis://127.0.0.1:6379/0 --secret S
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from bench.peers.common import arguments, authenticate, serve


def build(redis_url: str, secret: str) -> Starlette:
    async def subscribe(channel: str) -> AsyncIterator[str]:
        # PubSub.subscribe of the seed: a new connection per socket, a 1 s sleep after each poll
        sub = aioredis.from_url(redis_url).pubsub()
        async with sub as conn:
            await conn.subscribe(channel)
            while True:
                try:
                    message = await conn.get_message(ignore_subscribe_messages=True)
                    if message is not None:
                        yield message["data"].decode("utf-8")
                    await asyncio.sleep(1)
                except Exception:
                    break
            await conn.unsubscribe(channel)
        await sub.aclose()  # type: ignore[no-untyped-call]

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        user_id = await authenticate(websocket, secret)
        if user_id is None:
            return
        async for text in subscribe(f"notifications:{user_id}"):
            await websocket.send_text(text)
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


if __name__ == "__main__":
    args = arguments("seed 004: one Redis connection per socket, 1 s polling")
    serve(build(args.redis, args.secret), args.port)
