"""Web Push sends (protocol §13), a supervised loop of every hub process; the decisions that
fill the outbox are hub/push_decider.py's.

The sender claims due rows (committed before any request, SKIP LOCKED), keeps at most
`PUSH_MAX_IN_FLIGHT` requests open (hub/push_http.py) and records the outcomes in batches:
sent, 404/410 deletes the subscription, 429 waits `Retry-After`, 5xx and network errors back
off, all within the TTL. Its decider's commits wake it (`wake`), so sending starts with the
first decisions and keeps up with them; it looks at least every IDLE_SECONDS.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hub import push_store
from hub.address_policy import AddressRefused, resolve
from hub.db import Database, HeldConnection, utcnow
from hub.metrics import Metrics
from hub.push_crypto import PushKeyError, VapidSigner, encrypt
from hub.push_http import PushClient, PushHttpError, post_request
from hub.supervise import backoff_delay

log = logging.getLogger("hub.push")

REQUEST_TIMEOUT = 10.0
CLAIM_LEASE = dt.timedelta(seconds=60)  # far beyond REQUEST_TIMEOUT: only a dead process outlives it
MAX_BACKOFF = 300.0
ADDRESS_CHECK_SECONDS = 60.0
ROUND_SECONDS = 1.0  # the longest a sender waits before recording outcomes and claiming more
IDLE_SECONDS = 0.5  # with nothing due, how long a sender waits for the decider before looking again
ABANDONED_CHECK_SECONDS = 10.0

Outcome = tuple[push_store.ClaimedPush, str, float | None]  # push, result, Retry-After seconds


@dataclass(frozen=True, slots=True)
class _Origin:
    """A push service's host as last checked: where to connect, trusted until (monotonic)."""

    host: str
    port: int
    host_header: str
    addresses: tuple[str, ...]
    until: float


class PushSender:
    """Sends the outbox. `open` makes its HTTP client (system CAs, or `SSL_CERT_FILE`)."""

    def __init__(self, db: Database, metrics: Metrics, signer: VapidSigner, max_in_flight: int,
                 allow_private: bool) -> None:
        self._db = db
        self._metrics = metrics
        self._signer = signer
        self._max_in_flight = max_in_flight
        self._allow_private = allow_private
        self._client: PushClient | None = None
        self._held = HeldConnection(db) if db.dialect == "postgresql" else None
        self._origins: dict[str, _Origin] = {}  # by the endpoint's scheme://netloc
        self._abandoned_check = 0.0  # monotonic time of the next look for abandoned claims
        self._round = asyncio.Event()  # a round is worth doing: pushes finished or became due
        self._new = False  # pushes were decided since the last claim

    def wake(self) -> None:
        """Pushes were just decided (this process's decider committed them): claim them now
        rather than at the next look."""
        self._new = True
        self._round.set()

    def open(self) -> None:
        # create_default_context loads the system CAs, or SSL_CERT_FILE/SSL_CERT_DIR when set.
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        self._client = PushClient(context, timeout=REQUEST_TIMEOUT, max_idle=self._max_in_flight)

    async def close(self) -> None:
        if self._held is not None:
            await self._held.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _origin(self, endpoint: str) -> tuple[_Origin, str]:
        """The endpoint's origin, its host still resolving to public addresses only (checked
        again at send time, since DNS may have changed since the subscription; a pass is
        trusted for ADDRESS_CHECK_SECONDS per host, so a burst resolves each host once), and
        the request target (path and query)."""
        parts = urlsplit(endpoint)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        now = time.monotonic()
        origin = self._origins.get(parts.netloc)
        if origin is not None and origin.until > now:
            return origin, target
        if parts.scheme != "https" or not parts.hostname:
            raise AddressRefused(f"not an https URL: {endpoint[:100]!r}")
        host, port = parts.hostname, parts.port or 443
        addresses = await resolve(host, port, allow_private=self._allow_private)
        literal = f"[{host}]" if ":" in host else host
        origin = _Origin(host, port, literal if port == 443 else f"{literal}:{port}",
                         tuple(str(ip) for ip in addresses), now + ADDRESS_CHECK_SECONDS)
        if len(self._origins) > 1000:
            self._origins.clear()
        self._origins[parts.netloc] = origin
        return origin, target

    async def step(self) -> None:
        """Send what is due, then wait up to IDLE_SECONDS for the decider's `wake`."""
        await self._send_due()
        self._round.clear()
        if not self._new:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_SECONDS):
                    await self._round.wait()

    async def _send_due(self) -> None:
        """Keep up to `PUSH_MAX_IN_FLIGHT` pushes in flight until none is due. Each round
        (`_record_and_claim`) records the outcomes of the pushes finished since the last round and
        claims as many new ones; a round comes when half the slots are free, when the outbox
        had run dry and the decider adds pushes (so sending keeps up with deciding), once the
        outbox is drained when every push in flight is done, and at least every ROUND_SECONDS."""
        now = time.monotonic()
        if now >= self._abandoned_check:
            self._abandoned_check = now + ABANDONED_CHECK_SECONDS
            async with self._db.sessions.begin() as session:
                abandoned = await push_store.drop_abandoned(session, utcnow())
            if abandoned:
                log.warning("dropped %d pushes whose process died while sending them", abandoned)
                self._metrics.push_sent.labels("abandoned").inc(abandoned)
        in_flight: set[asyncio.Task[Outcome]] = set()
        finished: list[Outcome] = []
        wanted = 1  # finished pushes worth a round

        def on_done(task: asyncio.Task[Outcome]) -> None:
            in_flight.discard(task)
            if task.cancelled():
                return
            if (error := task.exception()) is not None:  # its row stays claimed, then dropped
                log.error("sending a push failed", exc_info=error)
            else:
                finished.append(task.result())
            if len(finished) >= wanted or not in_flight:
                self._round.set()

        try:
            while True:
                outcomes, finished[:] = finished[:], []
                room = self._max_in_flight - len(in_flight)
                self._new = False
                claimed = await self._record_and_claim(outcomes, room)
                for push in claimed:
                    task = asyncio.create_task(self._send(push))
                    in_flight.add(task)
                    task.add_done_callback(on_done)
                if not in_flight:
                    if finished or self._new:
                        continue
                    if self._client is not None:
                        self._client.sweep()
                    return
                drained = len(claimed) < room
                wanted = len(in_flight) if drained else max(1, self._max_in_flight // 2)
                deadline = asyncio.get_running_loop().time() + ROUND_SECONDS
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        while in_flight and len(finished) < wanted and not (drained and self._new):
                            self._round.clear()
                            await self._round.wait()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _record_and_claim(self, outcomes: list[Outcome], room: int) -> list[push_store.ClaimedPush]:
        """Record `outcomes` and claim up to `room` pushes. On PostgreSQL the pushes done with
        are deleted and the next ones claimed by one self-committing statement on a connection
        kept between rounds; retries and gone subscriptions (rare) are written first, in a
        transaction of their own."""
        others: list[Outcome] = []  # counted as they are recorded
        done: list[int] = []
        for outcome in outcomes:
            push, result, _ = outcome
            if result in ("gone", "retry"):
                others.append(outcome)
            else:
                done.append(push.id)
                self._metrics.push_sent.labels(result).inc()
        if self._held is None:
            async with self._db.sessions.begin() as session:
                done += await self._record(session, others)
                await push_store.finish(session, done)
                return await push_store.claim_due(session, utcnow(), CLAIM_LEASE, room) \
                    if room else []
        if others:
            async with self._db.sessions.begin() as session:
                done += await self._record(session, others)
        if not done and not room:
            return []
        async with self._held.use() as connection:
            return await push_store.finish_and_claim(connection, done, utcnow(), CLAIM_LEASE, room)

    async def _record(self, session: Any, outcomes: list[Outcome]) -> list[int]:
        """Store retries and gone subscriptions, count them; the ids of the pushes that are
        done with (a retry past the TTL expires)."""
        done: list[int] = []
        for push, result, retry_after in outcomes:
            if result == "gone":
                await push_store.remove_subscription(session, push.subscription_id)
            else:
                attempts = push.attempts + 1
                delay = retry_after if retry_after is not None else max(
                    1.0, backoff_delay(attempts, base=1.0, cap=MAX_BACKOFF))
                when = utcnow() + dt.timedelta(seconds=delay)
                if when >= push.expires_at:
                    result = "expired"
                    done.append(push.id)
                else:
                    result = "retried"
                    await push_store.retry_at(session, push.id, when, attempts)
            self._metrics.push_sent.labels(result).inc()
        return done

    async def _send(self, push: push_store.ClaimedPush) -> Outcome:
        """One request: the push with "sent" | "gone" | "retry" | "rejected" | "expired", and
        the seconds of a `Retry-After`."""
        result, retry_after = await self._request(push)
        return push, result, retry_after

    async def _request(self, push: push_store.ClaimedPush) -> tuple[str, float | None]:
        ttl = int((push.expires_at - utcnow()).total_seconds())
        if ttl <= 0:
            return "expired", None
        try:
            origin, target = await self._origin(push.endpoint)
            headers = [("TTL", str(ttl)), ("Content-Encoding", "aes128gcm"),
                       ("Content-Type", "application/octet-stream"), ("Urgency", push.urgency),
                       ("Authorization", self._signer.authorization(push.endpoint))]
            if push.topic:
                headers.append(("Topic", push.topic))
            request = post_request(origin.host_header, target, headers,
                                   encrypt(push.payload, push.p256dh, push.auth))
        except AddressRefused as exc:
            log.warning("push endpoint refused, subscription %s deleted: %s", push.subscription_id, exc)
            return "gone", None
        except PushKeyError:
            return "gone", None
        except ValueError as exc:  # a target or header that cannot be sent as is
            log.warning("push to subscription %s cannot be sent, deleted: %s", push.subscription_id, exc)
            return "gone", None
        assert self._client is not None, "PushSender.open() was not called"
        try:
            answer = await self._client.post(origin.host, origin.port, origin.addresses, request)
        except PushHttpError as exc:
            log.info("push to subscription %s failed: %s", push.subscription_id, exc)
            return "retry", None
        status = answer.status
        if 200 <= status < 300:
            return "sent", None
        if status in (404, 410):
            return "gone", None
        if status == 429 or status >= 500:
            return "retry", _retry_after(answer.retry_after)
        log.warning("push service refused subscription %s's push: %s %s", push.subscription_id,
                    status, answer.body[:200].decode(errors="replace"))
        return "rejected", None


def _retry_after(value: str | None) -> float | None:
    """Seconds of a `Retry-After` (a number or an HTTP date), capped at MAX_BACKOFF."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (moment - utcnow()).total_seconds()
    return min(MAX_BACKOFF, max(0.0, seconds))
