"""encode/broadcaster with its Redis backend in a Starlette endpoint, as its README shows:
one pub/sub connection per process, `subscribe(channel)` per socket, one queue per subscriber.

    python bench/peers/broadcaster_server.py --port 8002 --redis redis://127.0.0.1:6379/0 --secret S
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.peers.common import arguments, authenticate, serve


def build(redis_url: str, secret: str) -> Starlette:
    broadcast = Broadcast(redis_url)

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        user_id = await authenticate(websocket, secret)
        if user_id is None:
            return

        async def receiver() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await websocket.receive_text()

        async def sender() -> None:
            async with broadcast.subscribe(channel=f"notifications:{user_id}") as subscriber:
                async for event in subscriber:  # type: ignore[union-attr]
                    if event is not None:
                        await websocket.send_text(event.message)

        tasks = [asyncio.create_task(receiver()), asyncio.create_task(sender())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with broadcast:
            yield

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)


if __name__ == "__main__":
    args = arguments("encode/broadcaster (Redis backend) peer")
    serve(build(args.redis, args.secret), args.port)
