"""The `hub` command: serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from hub.env import ConfigError, report
from hub.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub", description="Real-time notification hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    commands.add_parser("migrate", help="apply the database migrations")
    commands.add_parser("vapid-keys", help="print a new VAPID key pair for Web Push as .env lines")
    listen = commands.add_parser("listen", help="print a user's live events as JSON lines")
    listen.add_argument("--url", required=True, help="the hub's WebSocket URL, e.g. ws://127.0.0.1:8000/ws")
    listen.add_argument("--token", default=os.environ.get("HUB_TOKEN"), help="an access token")
    listen.add_argument("--username", help="log in over REST instead of --token")
    listen.add_argument("--password", default=os.environ.get("HUB_PASSWORD"))
    listen.add_argument("--api-url", help="REST base URL (default: derived from --url)")
    listen.add_argument("--last-event-id", type=int, help="resume after this id (with --epoch)")
    listen.add_argument("--epoch")
    listen.add_argument("--transport", choices=("ws", "stream"), default="ws",
                        help="stream: read GET /api/v1/stream where WebSockets are blocked")
    args = parser.parse_args(argv)
    if args.command == "vapid-keys":
        from hub.push_crypto import generate_vapid_key, load_vapid_key, public_key_b64

        private = generate_vapid_key()
        print(f"VAPID_PRIVATE_KEY={private}")
        print("VAPID_SUBJECT=mailto:you@example.com")
        print(f"# public key (GET /api/v1/push/key serves it): {public_key_b64(load_vapid_key(private))}")
        return 0
    if args.command == "listen":
        from hub.client import listen_command

        return listen_command(args)
    try:
        settings = Settings.from_env(os.environ)
        logging.basicConfig(level=settings.log_level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # start-up noise
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        from hub.server import serve as run_server

        return run_server(settings, args.host, args.port, args.workers)
    except ConfigError as exc:
        return report("hub", exc)
    except KeyboardInterrupt:
        return 130


async def _migrate(settings: Settings) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from hub import migrate
    from hub.db import Database

    db = Database(settings.database_url)
    db.open()
    try:
        await migrate.upgrade(db)
    except (OSError, SQLAlchemyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        print(f"hub: migrate failed, the database is unreachable or refused it: {reason}",
              file=sys.stderr)
        return 1
    finally:
        await db.close()
    print("hub: database is at the latest migration")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
