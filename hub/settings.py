"""Configuration, read once from the environment and validated before anything starts.

Values are read with the shared reader of `hub.env`: a bad value raises its `ConfigError`
(re-exported here), one line that says how to fix it; the CLI prints it and exits 2.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from hub.env import HTTP_URL_SCHEMES, LOG_LEVELS, REDIS_URL_SCHEMES, EnvReader
from hub.env import ConfigError as ConfigError  # re-exported: the error of Settings.from_env

log = logging.getLogger("hub.settings")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./hub.db"
PLACEHOLDER_SECRETS = frozenset(
    {"", "secret", "changeme", "change-me", "change_me", "changethis", "please-change-me",
     "your-secret", "your-secret-key", "jwt-secret", "supersecret", "dev", "test", "example"}
)
MIN_SECRET_LENGTH = 32
MIN_SECRET_BITS_PER_CHAR = 3.0  # hex is 4, base64url 6; "aaaa…" is 0 and "abab…" is 1
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
ENVIRONMENTS = ("dev", "production")
JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
EVENT_NAME = r"^[a-z][a-z0-9_.:-]{0,63}$"
DEFAULT_PUSH_EVENTS = ("chat.message", "parse.completed", "exchange.result")


@dataclass(frozen=True)
class Settings:
    """Every setting of the hub as plain, validated values (see the README's configuration table)."""

    env: str = "dev"
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_channel_prefix: str = ""
    redis_cluster: bool = False  # REDIS_URL names the nodes of a Redis Cluster (sharded pub/sub)
    jwt_secret: str = field(default="", repr=False)
    jwt_algorithm: str = "HS256"
    jwt_secret_generated: bool = False
    access_token_ttl: int = 900
    refresh_token_ttl: int = 30 * 24 * 3600
    ws_ping_interval: float = 20.0
    ws_auth_timeout: float = 10.0
    ws_max_connections_per_user: int = 20
    ws_queue_max_messages: int = 1000
    ws_queue_max_bytes: int = 4 * 1024 * 1024
    ws_rate_limit: float = 20.0
    ws_rate_burst: int = 40
    ws_max_message_bytes: int = 4096
    ws_max_fragments: int = 16
    stream_ticket_ttl: int = 30  # seconds a ticket of POST /api/v1/stream/tickets works
    http_header_timeout: float = 10.0
    http_max_header_bytes: int = 32 * 1024
    hub_api_key: str | None = field(default=None, repr=False)
    parser_service_token: str | None = field(default=None, repr=False)
    exchange_service_url: str | None = None
    exchange_service_token: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    parse_timeout: float = 30.0
    parse_max_pending: int = 10  # pending parse requests per user; more is 429
    parser_allow_private: bool = False  # the embedded parser (no REDIS_URL) may fetch private addresses
    exchange_retry_window: float = 60.0  # seconds of failed hand-overs before an exchange fails
    stream_retention_events: int = 10_000
    stream_retention_seconds: int = 7 * 24 * 3600
    chat_max_members: int = 1000
    chat_post_rate: float = 5.0  # messages per second per user, on average
    chat_post_burst: int = 20
    chat_typing_interval: float = 2.0  # seconds between forwarded typing signals per user and chat
    presence: bool = True  # PRESENCE=0: no presence bookkeeping or frames (nobody shown online)
    presence_heartbeat: float = 5.0  # seconds between a process's presence heartbeats in Redis
    presence_ttl: float = 15.0  # a process silent this long is swept out, its users offline
    presence_offline_grace: float = 1.0  # a reconnect within this announces nothing
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    auth_rate_limit: int = 20  # register, login, refresh... per client address per minute
    login_failure_limit: int = 10  # failed logins per username per window
    login_failure_window: int = 15 * 60
    log_level: str = "INFO"
    tls_certificate_file: str | None = None  # the served chain, for the certificate expiry metric
    vapid_private_key: str | None = field(default=None, repr=False)  # Web Push is off without it
    vapid_subject: str | None = None
    push_events: tuple[str, ...] = DEFAULT_PUSH_EVENTS
    push_delay: float = 10.0  # seconds an event waits to be seen before it is pushed
    push_ttl: int = 86400
    push_allow_private: bool = False
    push_max_subscriptions: int = 10  # per user
    push_max_in_flight: int = 100  # push requests open at once, per process

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def push_enabled(self) -> bool:
        return self.vapid_private_key is not None

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping; raises ConfigError on the first bad value."""
        r = _Reader(environ)
        env = r.choice("HUB_ENV", "dev", ENVIRONMENTS)
        secret = r.text("JWT_SECRET", "")
        generated = False
        if env == "production":
            check_secret_strength("JWT_SECRET", secret)
        elif not secret:
            secret = secrets.token_urlsafe(48)
            generated = True
        heartbeat = r.number("PRESENCE_HEARTBEAT", 5.0, minimum=0.1, maximum=15.0)
        presence_ttl = r.number("PRESENCE_TTL", 15.0, minimum=0.2, maximum=25.0)
        if presence_ttl < 2 * heartbeat or presence_ttl + heartbeat > 30:
            raise ConfigError("PRESENCE_TTL must be at least twice PRESENCE_HEARTBEAT (a late "
                              "heartbeat is no death) and PRESENCE_TTL + PRESENCE_HEARTBEAT at "
                              f"most 30 s (a dead process's users go offline within 30 s); got "
                              f"{presence_ttl:g} and {heartbeat:g}")
        return cls(
            env=env,
            database_url=normalize_database_url(r.text("DATABASE_URL", DEFAULT_DATABASE_URL)),
            redis_url=r.optional_url("REDIS_URL", REDIS_URL_SCHEMES),
            redis_channel_prefix=r.text("REDIS_CHANNEL_PREFIX", ""),
            redis_cluster=r.redis_cluster("REDIS_CLUSTER"),
            jwt_secret=secret,
            jwt_algorithm=r.choice("JWT_ALGORITHM", "HS256", JWT_ALGORITHMS),
            jwt_secret_generated=generated,
            access_token_ttl=r.integer("ACCESS_TOKEN_TTL", 900, minimum=10),
            refresh_token_ttl=r.integer("REFRESH_TOKEN_TTL", 30 * 24 * 3600, minimum=60),
            ws_ping_interval=r.number("WS_PING_INTERVAL", 20.0, minimum=0.1),
            ws_auth_timeout=r.number("WS_AUTH_TIMEOUT", 10.0, minimum=0.1),
            ws_max_connections_per_user=r.integer("WS_MAX_CONNECTIONS_PER_USER", 20, minimum=1),
            ws_queue_max_messages=r.integer("WS_QUEUE_MAX_MESSAGES", 1000, minimum=1),
            ws_queue_max_bytes=r.integer("WS_QUEUE_MAX_BYTES", 4 * 1024 * 1024, minimum=1024),
            ws_rate_limit=r.number("WS_RATE_LIMIT", 20.0, minimum=0.1),
            ws_rate_burst=r.integer("WS_RATE_BURST", 40, minimum=1),
            ws_max_message_bytes=r.integer("WS_MAX_MESSAGE_BYTES", 4096, minimum=125),
            ws_max_fragments=r.integer("WS_MAX_FRAGMENTS", 16, minimum=1),
            stream_ticket_ttl=r.integer("STREAM_TICKET_TTL", 30, minimum=1),
            http_header_timeout=r.number("HTTP_HEADER_TIMEOUT", 10.0, minimum=0.1),
            http_max_header_bytes=r.integer("HTTP_MAX_HEADER_BYTES", 32 * 1024, minimum=1024),
            hub_api_key=r.secret("HUB_API_KEY", env),
            parser_service_token=r.secret("PARSER_SERVICE_TOKEN", env),
            exchange_service_url=r.optional_url("EXCHANGE_SERVICE_URL", HTTP_URL_SCHEMES),
            exchange_service_token=r.secret("EXCHANGE_SERVICE_TOKEN", env),
            allowed_origins=r.origins("ALLOWED_ORIGINS"),
            parse_timeout=r.number("PARSE_TIMEOUT", 30.0, minimum=0.1),
            parse_max_pending=r.integer("PARSE_MAX_PENDING", 10, minimum=1),
            parser_allow_private=r.flag("PARSER_ALLOW_PRIVATE"),
            exchange_retry_window=r.number("EXCHANGE_RETRY_WINDOW", 60.0, minimum=0.1),
            stream_retention_events=r.integer("STREAM_RETENTION_EVENTS", 10_000, minimum=1),
            stream_retention_seconds=r.integer("STREAM_RETENTION_SECONDS", 7 * 24 * 3600, minimum=1),
            chat_max_members=r.integer("CHAT_MAX_MEMBERS", 1000, minimum=2),
            chat_post_rate=r.number("CHAT_POST_RATE", 5.0, minimum=0.001),
            chat_post_burst=r.integer("CHAT_POST_BURST", 20, minimum=1),
            chat_typing_interval=r.number("CHAT_TYPING_INTERVAL", 2.0, minimum=0.1),
            presence=r.choice("PRESENCE", "1", ("0", "1")) == "1",
            presence_heartbeat=heartbeat,
            presence_ttl=presence_ttl,
            presence_offline_grace=r.number("PRESENCE_OFFLINE_GRACE", 1.0, minimum=0.0, maximum=2.0),
            trusted_proxies=r.networks("TRUSTED_PROXIES", ("127.0.0.1", "::1")),
            auth_rate_limit=r.integer("AUTH_RATE_LIMIT", 20, minimum=1),
            login_failure_limit=r.integer("LOGIN_FAILURE_LIMIT", 10, minimum=1),
            login_failure_window=r.integer("LOGIN_FAILURE_WINDOW", 15 * 60, minimum=1),
            log_level=r.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            tls_certificate_file=r.text("TLS_CERTIFICATE_FILE", "") or None,
            **_push_settings(r),
        )


def _push_settings(r: _Reader) -> dict[str, Any]:
    """Web Push (§13): off without `VAPID_PRIVATE_KEY`; with it, a usable P-256 key and a
    `mailto:` or `https:` subject."""
    key = r.text("VAPID_PRIVATE_KEY", "") or None
    subject = r.text("VAPID_SUBJECT", "") or None
    if key is not None:
        from hub.push_crypto import load_vapid_key  # cryptography only when push is on

        load_vapid_key(key)
        if subject is None or not subject.startswith(("mailto:", "https://")):
            raise ConfigError("VAPID_SUBJECT must be a mailto: or https: URL the push services can "
                              "reach you at (e.g. mailto:ops@example.com) when VAPID_PRIVATE_KEY is set")
    events = r.csv("PUSH_EVENTS") or DEFAULT_PUSH_EVENTS  # blank is the default, as everywhere
    for name in events:
        if not re.fullmatch(EVENT_NAME, name):
            raise ConfigError(f"PUSH_EVENTS: {name!r} is not an event name ({EVENT_NAME})")
    return {
        "vapid_private_key": key,
        "vapid_subject": subject,
        "push_events": events,
        "push_delay": r.number("PUSH_DELAY", 10.0, minimum=0.0),
        "push_ttl": r.integer("PUSH_TTL", 86400, minimum=0, maximum=28 * 24 * 3600),
        "push_allow_private": r.flag("PUSH_ALLOW_PRIVATE"),
        "push_max_subscriptions": r.integer("PUSH_MAX_SUBSCRIPTIONS", 10, minimum=1),
        "push_max_in_flight": r.integer("PUSH_MAX_IN_FLIGHT", 100, minimum=1),
    }


def check_secret_strength(name: str, value: str) -> None:
    """Production secrets: no placeholder, at least 32 characters, no short alphabet or repeated
    pattern (Shannon entropy of at least 3 bits a character, not a repetition of a shorter
    string). Raises ConfigError saying how to make a good one."""
    problem = None
    if value.strip().lower() in PLACEHOLDER_SECRETS:
        problem = "is missing or a placeholder"
    elif len(value) < MIN_SECRET_LENGTH:
        problem = f"is {len(value)} characters long (production needs at least {MIN_SECRET_LENGTH})"
    elif _bits_per_char(value) < MIN_SECRET_BITS_PER_CHAR or value in (value + value)[1:-1]:
        problem = f"is too predictable ({len(set(value))} distinct characters, or a repeated pattern)"
    if problem is not None:
        raise ConfigError(f"{name} {problem}: set it to a random value, e.g. `{GENERATE_SECRET}`")


def _bits_per_char(value: str) -> float:
    counts = [value.count(char) for char in set(value)]
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts)


def normalize_database_url(url: str) -> str:
    """Accept the plain `postgresql://` and `postgres://` forms and name the async driver."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://"):]
    if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise ConfigError(
            "DATABASE_URL must start with postgresql://, postgresql+asyncpg:// or "
            f"sqlite+aiosqlite:/// (got {url.split('://')[0]!r}://...)"
        )
    return url


class _Reader(EnvReader):
    """The shared reader, plus the hub's own kinds of value: secrets and browser origins."""

    def secret(self, name: str, env: str) -> str | None:
        value = self.text(name, "")
        if not value:
            return None
        if env == "production":
            check_secret_strength(name, value)
        return value

    def origins(self, name: str) -> tuple[str, ...]:
        found = []
        for value in self.csv(name):
            origin = normalize_origin(value)
            if origin is None:
                raise ConfigError(f"{name}: {value!r} is not an origin like https://chat.example.com")
            found.append(origin)
        return tuple(found)


DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` as browsers send it in `Origin` (lower case, no default port, no
    trailing slash), or None when `value` is no such origin (a path, credentials, `null`)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if (not parts.scheme or not parts.hostname or parts.username is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"
