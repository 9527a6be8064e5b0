"""Prometheus metrics of one process, in a registry of its own (no import-time globals)."""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TRANSPORTS = ("ws", "stream")  # the `transport` label: /ws, the HTTP event stream (§12)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

log = logging.getLogger(__name__)


class Metrics:
    """`tls_certificate_file` (TLS_CERTIFICATE_FILE), when given, adds the expiry of the
    certificate the deployment serves (see CertificateExpiry)."""

    def __init__(self, tls_certificate_file: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if tls_certificate_file is not None:
            r.register(CertificateExpiry(Path(tls_certificate_file)))
        self.connections = Gauge("hub_connections",
                                 "Open authenticated connections, by transport (ws, stream)",
                                 ["transport"], registry=r)
        self.stream_connections = Gauge("hub_stream_connections",
                                        "Open authenticated HTTP event streams (/api/v1/stream); "
                                        "deprecated: hub_connections{transport=\"stream\"}",
                                        registry=r)
        self.stream_ends = Counter("hub_stream_ends_total",
                                   "HTTP event streams the hub ended, by the error event it sent",
                                   ["code"], registry=r)
        self.events_published = Counter("hub_events_published_total",
                                        "Events handed to the broker after commit", registry=r)
        self.deliveries = Deliveries()
        r.register(self.deliveries)
        self.slow_consumer_disconnects = Counter("hub_slow_consumer_disconnects_total",
                                                 "Connections ended as slow consumers (/ws: 4009, "
                                                 "the stream: slow_consumer), by transport",
                                                 ["transport"], registry=r)
        self.http_requests = Counter("hub_http_requests_total", "REST requests answered",
                                     ["route", "method", "status"], registry=r)
        self.broker_reconnects = Counter("hub_broker_reconnects_total",
                                         "Times the broker listener reconnected", registry=r)
        self.relayed_events = Counter("hub_relayed_events_total",
                                      "Events republished by the relay after a failed publish",
                                      registry=r)
        self.gap_fills = Counter("hub_gap_fills_total",
                                 "Times a connection read missed events from the store", registry=r)
        self.trimmed_events = Counter("hub_trimmed_events_total",
                                      "Events removed by stream retention", registry=r)
        self.connections_rejected = Counter("hub_connections_rejected_total",
                                            "WebSocket connections refused or closed early",
                                            ["reason"], registry=r)
        self.signals_sent = Counter("hub_signals_sent_total",
                                    "Signal frames (presence, typing) sent, one per recipient and "
                                    "frame: handed to the broker or written at once to a "
                                    "recipient whose connections are all on this process", registry=r)
        self.presence_online = Gauge("hub_presence_online_users",
                                     "Users with a connection open on any process of the "
                                     "deployment (as of this process's last heartbeat)",
                                     registry=r)
        self.rate_limited = Counter("hub_rate_limited_total",
                                    "Requests refused with 429 by a rate limit", ["limit"],
                                    registry=r)
        self.push_sent = Counter("hub_push_sent_total",
                                 "Web Push outcomes: sent, seen (not pushed), gone (subscription "
                                 "deleted), retried, expired, rejected, abandoned",
                                 ["result"], registry=r)

        for transport in TRANSPORTS:  # every series from the start, at 0
            self.connections.labels(transport)
            self.slow_consumer_disconnects.labels(transport)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Latencies:
    """The delivery latencies of one transport: plain counters per bucket (the last one +Inf)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """One frame sent, `seconds` after its event was committed."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class Deliveries(Collector):
    """`hub_events_delivered_total` and `hub_delivery_latency_seconds` in one, by transport,
    observed once per event frame sent, the hottest call of the hub. prometheus_client's
    Histogram takes a lock per observation; this one is plain counters, safe because only the
    event loop's thread observes (a scrape from another thread may see an observation
    half-counted, never a corrupt value). A connection keeps its transport's `observer`."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self._bounds = buckets
        self._by_transport = {transport: Latencies(buckets) for transport in TRANSPORTS}
        # one bound method per transport, shared by its connections (not 64 bytes each)
        self._observers = {name: latencies.observe for name, latencies in self._by_transport.items()}

    def observer(self, transport: str) -> Callable[[float], None]:
        """What a connection of `transport` calls per frame sent, with the seconds since commit."""
        return self._observers[transport]

    @property
    def total_sum(self) -> float:
        return sum(latencies.sum for latencies in self._by_transport.values())

    def collect(self) -> Iterator[Metric]:
        delivered = CounterMetricFamily("hub_events_delivered",
                                        "Event frames sent to connections, by transport",
                                        labels=["transport"])
        latency = HistogramMetricFamily("hub_delivery_latency_seconds",
                                        "From commit to the send of the event frame, by transport",
                                        labels=["transport"])
        for transport, latencies in self._by_transport.items():
            counts = list(latencies.counts)
            delivered.add_metric([transport], sum(counts))
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([transport], buckets, latencies.sum)
        yield delivered
        yield latency


class CertificateExpiry(Collector):
    """`hub_tls_certificate_expiry_timestamp_seconds`: notAfter of the first certificate in a PEM
    file (the chain nginx serves, copied there by certbot/served_certificate.py), read at every
    scrape, so a renewal shows at the next one. No sample while the file is missing or unreadable
    (alert on its absence too); the scrape itself never fails because of it."""

    NAME = "hub_tls_certificate_expiry_timestamp_seconds"

    def __init__(self, path: Path) -> None:
        self._path = path

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, "Unix time at which the served TLS certificate expires")

    def collect(self) -> Iterator[Metric]:
        try:
            certificate = x509.load_pem_x509_certificate(self._path.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("TLS_CERTIFICATE_FILE %s is unreadable: %s", self._path, exc)
            return
        yield GaugeMetricFamily(self.NAME, "Unix time at which the served TLS certificate expires",
                                value=certificate.not_valid_after_utc.timestamp())


class HttpMetricsMiddleware:
    """Counts answered HTTP requests by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            # `path_format` is the template without convertors: /chats/{chat_id}, not {chat_id:int}
            template = getattr(route, "path_format", None) or "unmatched"
            self.metrics.http_requests.labels(template, scope["method"], str(status)).inc()
