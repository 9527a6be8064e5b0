"""`python -m parser_bridge.exchange_service --host H --port P`: the asynchronous exchange
service of seed 002, done properly (protocol §8).

`POST /api/exchange_async` with `{"request_id", "exchange_rate", "bills"}` (and the
`Authorization: Bearer <EXCHANGE_SERVICE_TOKEN>` the hub sends) answers at once; every bill is
then computed concurrently (each taking EXCHANGE_DELAY seconds of simulated work) with exact
decimals, and the breakdown is PUT to `HUB_URL/api/exchange_result` with the token, retried with
back-off for about a minute while the hub is unreachable. SIGTERM: stop accepting, give the
jobs in flight a few seconds to deliver, exit 0.

Environment, read once at start with the hub's reader (`hub.env`; a bad value is one line on
stderr and exit status 2): HUB_URL (default http://127.0.0.1:8000), EXCHANGE_SERVICE_TOKEN
(required), EXCHANGE_DELAY (seconds, `1-3` by default: a range or one number),
EXCHANGE_RESULT_RETRY_WINDOW (seconds, 60), LOG_LEVEL (INFO).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
import uvicorn
from pydantic import ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.env import HTTP_URL_SCHEMES, LOG_LEVELS, ConfigError, EnvReader, report
from hub.errors import TooLarge
from hub.http import bearer_token, invalid_from, read_body
from hub.responses import json_response
from hub.supervise import backoff_delay
from parser_bridge.exchange import money

log = logging.getLogger("parser_bridge.exchange_service")
MAX_JOBS = 1000
SHUTDOWN_GRACE = 10.0
PUT_TIMEOUT = 5.0


@dataclass(frozen=True)
class ServiceConfig:
    hub_url: str
    token: str
    delay: tuple[float, float] = (1.0, 3.0)
    result_retry_window: float = 60.0
    log_level: str = "INFO"

    @property
    def result_url(self) -> str:
        return self.hub_url.rstrip("/") + "/api/exchange_result"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServiceConfig:
        """Read the service's variables (module docstring); raises ConfigError on a bad one."""
        r = EnvReader(environ)
        return cls(
            hub_url=r.url("HUB_URL", HTTP_URL_SCHEMES, "http://127.0.0.1:8000"),
            token=r.required("EXCHANGE_SERVICE_TOKEN", "the hub's EXCHANGE_SERVICE_TOKEN"),
            delay=parse_delay(r.text("EXCHANGE_DELAY", "")),
            result_retry_window=r.number("EXCHANGE_RESULT_RETRY_WINDOW", 60.0, minimum=0.1,
                                         maximum=86400),
            log_level=r.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
        )


def parse_delay(text: str) -> tuple[float, float]:
    """`1-3` → (1, 3); `0.5` → (0.5, 0.5); empty → (1, 3). ConfigError otherwise."""
    text = text.strip() or "1-3"
    low_text, _, high_text = text.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if high_text else low
    except ValueError:
        raise ConfigError(f"EXCHANGE_DELAY={text!r}: use seconds, e.g. 2 or 1-3") from None
    if not 0 <= low <= high <= 3600:
        raise ConfigError(f"EXCHANGE_DELAY={text!r}: need 0 <= low <= high <= 3600")
    return low, high


class ExchangeJob(money.ExchangeOrder):
    model_config = ConfigDict(extra="ignore")
    request_id: int


def _error(status: int, code: str, detail: str, **extra: Any) -> Response:
    return json_response({"error": code, "detail": detail, **extra}, status)


class ExchangeService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._jobs: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/exchange_async", self.accept, methods=["POST"]),
                                 Route("/healthz", self.health, methods=["GET"])],
                         lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=PUT_TIMEOUT, trust_env=False) as client:
            self._client = client
            try:
                yield
            finally:
                if self._jobs:
                    log.info("delivering %d jobs in flight before exit", len(self._jobs))
                    _done, late = await asyncio.wait(self._jobs, timeout=SHUTDOWN_GRACE)
                    for task in late:
                        task.cancel()
                    await asyncio.gather(*late, return_exceptions=True)
                self._client = None

    async def health(self, _request: Request) -> Response:
        return json_response({"status": "ok", "jobs": len(self._jobs)})

    async def accept(self, request: Request) -> Response:
        given = bearer_token(request) or ""
        if not hmac.compare_digest(given.encode(), self.config.token.encode()):
            return _error(403, "forbidden", "missing or wrong EXCHANGE_SERVICE_TOKEN")
        try:
            body = await read_body(request)
        except TooLarge as exc:
            return _error(413, "too_large", exc.detail)
        try:
            job = ExchangeJob.model_validate(money.loads_exact(body))
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, ValidationError):
                invalid = invalid_from(exc)
                return _error(422, "invalid", invalid.detail, **invalid.extra)
            return _error(422, "invalid", "body: not valid JSON")
        if len(self._jobs) >= MAX_JOBS:
            return _error(503, "unavailable", f"{MAX_JOBS} jobs are in flight; retry later")
        task = asyncio.create_task(self._run(job), name=f"exchange {job.request_id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return json_response({"status": "ok"})

    async def _run(self, job: ExchangeJob) -> None:
        try:
            subtotals = await asyncio.gather(*(self._compute(bill, job.exchange_rate) for bill in job.bills))
            await self._deliver(job.request_id, subtotals)
        except asyncio.CancelledError:
            log.warning("request %d: cancelled before its result was delivered", job.request_id)
            raise
        except Exception:
            log.exception("request %d: failed", job.request_id)

    async def _compute(self, bill: money.Bill, rate: Decimal) -> money.Subtotal:
        await asyncio.sleep(random.uniform(*self.config.delay))  # noqa: S311  (simulated work)
        item = money.Subtotal(denomination_id=bill.denomination_id, subtotal_rub=money.subtotal(bill, rate))
        log.info("computed bill %d: %s RUB", bill.denomination_id, item.subtotal_rub)
        return item

    async def _deliver(self, request_id: int, subtotals: Sequence[money.Subtotal]) -> None:
        assert self._client is not None
        body = orjson.dumps({"token": self.config.token, "request_id": request_id,
                             "breakdown": money.breakdown_json(subtotals)})
        deadline = asyncio.get_running_loop().time() + self.config.result_retry_window
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._client.put(self.config.result_url, content=body,
                                                headers={"Content-Type": "application/json"})
                status, problem = answer.status_code, f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                status, problem = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300 or status == 409:
                log.info("request %d: result delivered (HTTP %d)", request_id, status)
                return
            if status in (400, 403, 404, 413, 415, 422):
                log.error("request %d: the hub refused the result (%s); not retrying", request_id, problem)
                return
            delay = max(0.2, backoff_delay(attempt, base=0.5, cap=10.0))
            if asyncio.get_running_loop().time() + delay > deadline:
                log.error("request %d: giving up after %d attempts (%s)", request_id, attempt, problem)
                return
            log.warning("request %d: delivery attempt %d failed (%s); retrying in %.1fs",
                        request_id, attempt, problem, delay)
            await asyncio.sleep(delay)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parser_bridge.exchange_service",
                                     description="The asynchronous exchange service of the hub.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    try:
        config = ServiceConfig.from_env(os.environ if environ is None else environ)
    except ConfigError as exc:
        return report("exchange service", exc)
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = ExchangeService(config)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the handler it found;
    # a no-op handler there makes a graceful stop exit 0 instead of dying by the signal
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    uvicorn.run(service.app(), host=args.host, port=args.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(SHUTDOWN_GRACE), server_header=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
