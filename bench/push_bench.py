"""Web Push benchmark: pushes decided and sent per second for offline users of one publish call.

Starts a hub process (`python -m hub serve`, PostgreSQL + Redis in a throw-away database, Web
Push on with PUSH_DELAY=0) and, in a child process, a push service sink over HTTPS on 127.0.0.1
that answers 201 and counts (it neither checks nor decrypts, so the hub's side is measured);
inserts `--users` users, each with one subscription (keys made once and reused: the hub's cost
per push is the same), publishes one event to all of them, and times the pushes' arrival.

    .venv/bin/python -m bench.push_bench --users 10000

Not part of the tests. The hub, the sink and this script share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from bench.chat_bench import free_port, running_hub, scratch_database
from hub.push_crypto import b64url, generate_vapid_key, public_key_b64
from tests.certs import self_signed

EVENT = "bench.push"
API_KEY = "bench-api-key-" + secrets.token_hex(8)


def sink(port: int, cert: str, key: str) -> None:
    """The push service sink (run in a child process): 201 to every push, `GET /count`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    count = 0

    async def push(request: Request) -> Response:
        nonlocal count
        await request.body()
        count += 1
        return Response(status_code=201)

    async def total(_request: Request) -> Response:
        return PlainTextResponse(str(count))

    app = Starlette(routes=[Route("/push/{token}", push, methods=["POST"]),
                            Route("/count", total)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", ssl_certfile=cert,
                ssl_keyfile=key, access_log=False)


@contextlib.asynccontextmanager
async def running_sink(workdir: Path) -> AsyncIterator[tuple[str, Path]]:
    cert, key = self_signed(workdir)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.push_bench", "--sink", str(port), str(cert), str(key))
    base = f"https://localhost:{port}"
    try:
        async with httpx.AsyncClient(verify=str(cert)) as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    await http.get(base + "/count")
                    break
                await asyncio.sleep(0.1)
        yield base, cert
    finally:
        process.terminate()
        await process.wait()


async def insert_users(database_url: str, users: int, endpoint_base: str) -> list[int]:
    keys = [(public_key_b64(ec.generate_private_key(ec.SECP256R1())), b64url(os.urandom(16)))
            for _ in range(100)]
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(database_url)
    try:
        ids = [row[0] for row in await connection.fetch(
            "INSERT INTO users (username, created_at) SELECT 'bench' || n, $2 "
            "FROM generate_series(1, $1) AS n RETURNING id", users, now)]
        await connection.executemany(
            "INSERT INTO streams (user_id, epoch, last_id, published_id, trimmed_id, updated_at) "
            "VALUES ($1, $2, 0, 0, 0, $3)", [(i, secrets.token_hex(8), now) for i in ids])
        await connection.executemany(
            "INSERT INTO push_users (user_id, scanned_id, delivered_id) VALUES ($1, 0, 0)",
            [(i,) for i in ids])
        await connection.executemany(
            "INSERT INTO push_subscriptions (user_id, endpoint, p256dh, auth, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(i, f"{endpoint_base}/push/{i}", *keys[i % len(keys)], now) for i in ids])
    finally:
        await connection.close()
    return ids


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        async with running_sink(workdir) as (sink_url, cert), \
                scratch_database("postgres", secrets.token_hex(4), workdir) as env:
            env = {**env, "VAPID_PRIVATE_KEY": generate_vapid_key(),
                   "VAPID_SUBJECT": "mailto:bench@example.com", "PUSH_DELAY": "0",
                   "PUSH_EVENTS": EVENT, "PUSH_ALLOW_PRIVATE": "1", "SSL_CERT_FILE": str(cert),
                   "HUB_API_KEY": API_KEY, "PUSH_MAX_IN_FLIGHT": str(args.in_flight)}
            async with running_hub(env, "postgres") as base_url:
                ids = await insert_users(env["DATABASE_URL"], args.users, sink_url)
                async with httpx.AsyncClient(base_url=base_url, timeout=60) as http, \
                        httpx.AsyncClient(verify=str(cert)) as sink_http:
                    started = time.perf_counter()
                    answer = await http.post("/api/v1/publish", json={
                        "user_ids": ids, "name": EVENT, "data": {"text": "hello"}},
                        headers={"Authorization": f"Bearer {API_KEY}"})
                    assert answer.status_code == 202, answer.text
                    published = time.perf_counter() - started
                    count = 0
                    while count < args.users:
                        if time.perf_counter() - started > args.deadline:
                            break
                        await asyncio.sleep(0.2)
                        count = int((await sink_http.get(sink_url + "/count")).text)
                    elapsed = time.perf_counter() - started
                    metrics = (await http.get("/metrics")).text
    sent = [line for line in metrics.splitlines() if line.startswith("hub_push_sent_total{")]
    print(f"users: {args.users}; publish answered in {published:.2f} s; {count} pushes arrived "
          f"in {elapsed:.2f} s: {count / elapsed:.0f} pushes/s")
    print("\n".join(sent))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--sink":
        sink(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--in-flight", type=int, default=100, help="PUSH_MAX_IN_FLIGHT")
    asyncio.run(bench(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
