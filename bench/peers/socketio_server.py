"""python-socketio as its docs recommend for several processes: an ASGI app on uvicorn,
`AsyncRedisManager`, and a room per user joined in the connect handler.

Clients connect to `/socket.io/?EIO=4&transport=websocket` with `auth={"token": ...}`; the
backend emits with `AsyncRedisManager(url, write_only=True).emit(name, data, room=f"user:{id}")`.

    python bench/peers/socketio_server.py --port 8004 --redis redis://127.0.0.1:6379/0 --secret S
"""

from __future__ import annotations

from typing import Any

import socketio

from bench.peers.common import arguments, serve, user_of


def build(redis_url: str, secret: str) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url),
                               cors_allowed_origins="*", transports=["websocket"])

    @sio.event  # type: ignore[untyped-decorator]
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> bool:
        user_id = user_of(auth.get("token") if isinstance(auth, dict) else None, secret)
        if user_id is None:
            return False
        await sio.enter_room(sid, f"user:{user_id}")
        return True

    return socketio.ASGIApp(sio)


if __name__ == "__main__":
    args = arguments("python-socketio (AsyncRedisManager) peer")
    serve(build(args.redis, args.secret), args.port)
