"""What every peer shares with the hub so that only the delivery design differs: the same JWT
check (python-jose, HS256, `sub` = user id), the same first-frame auth, and uvicorn with the
hub's options (uvloop, httptools, 4096-byte frames, 20 s pings), with uvicorn's own
`websockets-sansio` WebSocket layer behind ASGI (the hub has its own protocol under uvicorn)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import orjson
import uvicorn
from jose import JWTError, jwt
from starlette.websockets import WebSocket


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="redis://host:port/db")
    parser.add_argument("--secret", required=True, help="the JWT secret the bench signs tokens with")
    return parser.parse_args()


def user_of(token: Any, secret: str) -> int | None:
    """The user id of a valid access token, else None."""
    if not isinstance(token, str):
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"])
    except JWTError:
        return None
    sub = claims.get("sub")
    return int(sub) if isinstance(sub, str) and sub.isdigit() else None


async def authenticate(websocket: WebSocket, secret: str) -> int | None:
    """Read the first frame `{"type": "auth", "token"}`; close with 4001 and return None if bad."""
    try:
        frame = orjson.loads(await websocket.receive_text())
    except Exception:
        frame = None
    user_id = user_of(frame.get("token"), secret) if isinstance(frame, dict) else None
    if user_id is None:
        await websocket.close(code=4001)
        return None
    await websocket.send_text(orjson.dumps({"type": "welcome", "user_id": user_id}).decode())
    return user_id


def serve(app: Any, port: int) -> None:
    # BENCH_WS picks another uvicorn WebSocket implementation, to see what the protocol layer costs
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                ws=os.environ.get("BENCH_WS", "websockets-sansio"), ws_max_size=4096, ws_max_queue=16,
                ws_ping_interval=20.0,
                ws_ping_timeout=20.0, log_level="warning", access_log=False, server_header=False)
