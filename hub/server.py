"""Running the hub: uvicorn for one process, gunicorn with uvicorn workers for several."""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
from types import FrameType
from typing import Any

import uvicorn

from hub.env import ConfigError
from hub.http_protocol import http_protocol
from hub.settings import Settings

log = logging.getLogger("hub.server")

GRACEFUL_SECONDS = 20
GC_THRESHOLDS = (50_000, 20, 20)
ORPHAN_CHECK_SECONDS = 2.0  # how often a gunicorn worker checks that its master still lives


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Server settings the contract depends on: proxy headers from trusted proxies only, a
    graceful shutdown, request heads bounded in time and size (hub/http_protocol.py, uvicorn's
    `http` option). WebSocket upgrades go to the app's own protocol (hub/ws_socket.py, passed as
    uvicorn's `ws` option from `app.state.websocket_protocol`), which keeps the contract's
    pings, frame limit and close codes; it offers no compression: that would cost CPU per
    socket for every event, where each event is otherwise encoded once for all its recipients."""
    return {
        "http": http_protocol(settings),
        "proxy_headers": True,
        "forwarded_allow_ips": ",".join(settings.trusted_proxies),
        "timeout_graceful_shutdown": GRACEFUL_SECONDS,
        "server_header": False,
        "log_config": None,
    }


def check_process_model(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    if workers > 1 and settings.redis_url is None:
        raise ConfigError(
            f"--workers {workers} needs REDIS_URL: the in-process broker only reaches sockets "
            "of its own process"
        )


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully and return the exit status (0)."""
    check_process_model(settings, workers)
    raise_open_file_limit()
    if workers == 1:
        # uvicorn re-raises the signal it caught once it has shut down, so that the default
        # handler would kill the process with -15; the contract wants a graceful exit 0.
        previous = signal.signal(signal.SIGTERM, _already_stopped)
        try:
            app = _serving_app(settings)
            uvicorn.run(app, host=host, port=port, ws=app.state.websocket_protocol,
                        **uvicorn_options(settings))
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    return _gunicorn(settings, host, port, workers)


def raise_open_file_limit() -> None:
    """Raise this process's soft limit of open files to its hard limit (gunicorn's workers
    inherit it): each socket is a file, and the usual soft limit of 1,024 locks every client out
    long before memory or CPU run short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-file limit stays at %s (the hard limit is %s): %s", soft, hard, exc)
        return
    log.info("open-file limit raised from %s to %s", soft, hard)


class QuietQueries(logging.Filter):
    """Keeps the query string of paths that may carry a secret (the event stream's `?ticket=`)
    out of uvicorn's access log: `GET /api/v1/stream?...` is logged as `GET /api/v1/stream?…`."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        super().__init__()
        self._prefixes = tuple(path + "?" for path in paths)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = args[2]
            if path.startswith(self._prefixes):
                record.args = (*args[:2], path.partition("?")[0] + "?…", *args[3:])
        return True


def quiet_access_log() -> None:
    """Install `QuietQueries` on uvicorn's access logger (every serving process, once)."""
    from hub.event_stream import PATH

    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietQueries) for f in access.filters):
        access.addFilter(QuietQueries((PATH,)))


def _serving_app(settings: Settings) -> Any:
    """The app of a serving process (a worker's own, under gunicorn), its start-up settled."""
    from hub.app import create_app

    quiet_access_log()
    app = create_app(settings)
    settle_gc()
    return app


def settle_gc() -> None:
    """For a serving process, once everything is imported: what exists now (modules, classes,
    the app) leaves the collector's view (`gc.freeze`), and young collections run every 50,000
    allocations instead of 700, so the objects of a request or an event die young instead of
    being promoted while they wait a few ms in a queue. Measured with `bench.realtime_first`:
    full collections while 1,000 clients connect took 18-73 ms instead of up to 178, and the
    two of 160-200 ms during the durable phase are gone."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _already_stopped(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing left to do."""


def _gunicorn(settings: Settings, host: str, port: int, workers: int) -> int:
    from gunicorn.app.base import BaseApplication
    from uvicorn_worker import UvicornWorker

    options = uvicorn_options(settings)
    options.pop("log_config")

    class HubWorker(UvicornWorker):  # type: ignore[misc]
        CONFIG_KWARGS = {"loop": "auto", "http": "auto", "timeout_notify": ORPHAN_CHECK_SECONDS, **options}

        async def _serve(self) -> None:
            self.config.ws = self.wsgi.state.websocket_protocol
            await super()._serve()

        async def callback_notify(self) -> None:
            if os.getppid() != self.ppid:  # the master died without stopping us (SIGKILL, OOM killer)
                self.log.warning("gunicorn master %s is gone: worker %s shuts down", self.ppid, self.pid)
                os.kill(os.getpid(), signal.SIGTERM)
            self.notify()

    class HubApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"])
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", HubWorker)
            self.cfg.set("graceful_timeout", GRACEFUL_SECONDS + 5)
            self.cfg.set("timeout", 60)
            self.cfg.set("keepalive", 75)
            self.cfg.set("forwarded_allow_ips", ",".join(settings.trusted_proxies))

        def load(self) -> Any:
            return _serving_app(settings)

    HubApplication().run()
    return 0
