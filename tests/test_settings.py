"""Settings.from_env: every variable, every kind of bad value, the production secret rules."""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from pathlib import Path

import pytest

from hub.settings import (
    DEFAULT_DATABASE_URL,
    MIN_SECRET_LENGTH,
    ConfigError,
    Settings,
    normalize_database_url,
)

GOOD_SECRET = "Qm4vT8x_Lr2pZc7Nw1Ks9Yb3Hd6Fj0Ga"  # 32 characters, as secrets.token_urlsafe(24) makes

EVERY_VARIABLE = {
    "HUB_ENV": "production",
    "DATABASE_URL": "postgresql://hub:pw@db.internal:5433/hub",
    "REDIS_URL": "redis://cache:6380/2",
    "REDIS_CHANNEL_PREFIX": "staging:",
    "REDIS_CLUSTER": "false",
    "JWT_SECRET": GOOD_SECRET,
    "JWT_ALGORITHM": "HS512",
    "ACCESS_TOKEN_TTL": "600",
    "REFRESH_TOKEN_TTL": "86400",
    "WS_PING_INTERVAL": "15.5",
    "WS_AUTH_TIMEOUT": "5",
    "WS_MAX_CONNECTIONS_PER_USER": "7",
    "WS_QUEUE_MAX_MESSAGES": "300",
    "WS_QUEUE_MAX_BYTES": "65536",
    "WS_RATE_LIMIT": "5.5",
    "WS_RATE_BURST": "11",
    "WS_MAX_MESSAGE_BYTES": "2048",
    "WS_MAX_FRAGMENTS": "4",
    "STREAM_TICKET_TTL": "10",
    "HTTP_HEADER_TIMEOUT": "2.5",
    "HTTP_MAX_HEADER_BYTES": "16384",
    "HUB_API_KEY": "hub-api-key-8fK2mQ9xLp4vR7tZ1wC6",
    "PARSER_SERVICE_TOKEN": "parser-token-3nB8vY5kT2qW9eR4uI7o",
    "EXCHANGE_SERVICE_URL": "https://exchange.internal:8443",
    "EXCHANGE_SERVICE_TOKEN": "exchange-token-6hJ1gF4dS9aZ2xC5vB8n",
    "ALLOWED_ORIGINS": "https://app.example, https://admin.example ,",
    "PARSE_TIMEOUT": "12.5",
    "PARSE_MAX_PENDING": "3",
    "PARSER_ALLOW_PRIVATE": "1",
    "EXCHANGE_RETRY_WINDOW": "90",
    "STREAM_RETENTION_EVENTS": "500",
    "STREAM_RETENTION_SECONDS": "3600",
    "CHAT_MAX_MEMBERS": "50",
    "TRUSTED_PROXIES": "10.0.0.1,10.0.0.2,172.16.0.0/12",
    "AUTH_RATE_LIMIT": "30",
    "LOGIN_FAILURE_LIMIT": "5",
    "LOGIN_FAILURE_WINDOW": "600",
    "CHAT_POST_RATE": "2.5",
    "CHAT_POST_BURST": "8",
    "CHAT_TYPING_INTERVAL": "3",
    "PRESENCE": "0",
    "PRESENCE_HEARTBEAT": "2",
    "PRESENCE_TTL": "10",
    "PRESENCE_OFFLINE_GRACE": "0.5",
    "LOG_LEVEL": "WARNING",
    "TLS_CERTIFICATE_FILE": "/run/hub-tls/fullchain.pem",
    "VAPID_PRIVATE_KEY": "Q7f9ra2V7oOeP8kGLsHdbEAuEP9mhYkmB1y8OHZOjR0",
    "VAPID_SUBJECT": "mailto:ops@example.com",
    "PUSH_EVENTS": "chat.message,deploy.done",
    "PUSH_DELAY": "4.5",
    "PUSH_TTL": "3600",
    "PUSH_ALLOW_PRIVATE": "1",
    "PUSH_MAX_SUBSCRIPTIONS": "3",
    "PUSH_MAX_IN_FLIGHT": "20",
}

EXPECTED = {
    "env": "production",
    "database_url": "postgresql+asyncpg://hub:pw@db.internal:5433/hub",
    "redis_url": "redis://cache:6380/2",
    "redis_channel_prefix": "staging:",
    "redis_cluster": False,
    "jwt_secret": GOOD_SECRET,
    "jwt_algorithm": "HS512",
    "jwt_secret_generated": False,
    "access_token_ttl": 600,
    "refresh_token_ttl": 86400,
    "ws_ping_interval": 15.5,
    "ws_auth_timeout": 5.0,
    "ws_max_connections_per_user": 7,
    "ws_queue_max_messages": 300,
    "ws_queue_max_bytes": 65536,
    "ws_rate_limit": 5.5,
    "ws_rate_burst": 11,
    "ws_max_message_bytes": 2048,
    "ws_max_fragments": 4,
    "stream_ticket_ttl": 10,
    "http_header_timeout": 2.5,
    "http_max_header_bytes": 16384,
    "hub_api_key": "hub-api-key-8fK2mQ9xLp4vR7tZ1wC6",
    "parser_service_token": "parser-token-3nB8vY5kT2qW9eR4uI7o",
    "exchange_service_url": "https://exchange.internal:8443",
    "exchange_service_token": "exchange-token-6hJ1gF4dS9aZ2xC5vB8n",
    "allowed_origins": ("https://app.example", "https://admin.example"),
    "parse_timeout": 12.5,
    "parse_max_pending": 3,
    "parser_allow_private": True,
    "exchange_retry_window": 90.0,
    "stream_retention_events": 500,
    "stream_retention_seconds": 3600,
    "chat_max_members": 50,
    "trusted_proxies": ("10.0.0.1", "10.0.0.2", "172.16.0.0/12"),
    "auth_rate_limit": 30,
    "login_failure_limit": 5,
    "login_failure_window": 600,
    "chat_post_rate": 2.5,
    "chat_post_burst": 8,
    "chat_typing_interval": 3.0,
    "presence": False,
    "presence_heartbeat": 2.0,
    "presence_ttl": 10.0,
    "presence_offline_grace": 0.5,
    "log_level": "WARNING",
    "tls_certificate_file": "/run/hub-tls/fullchain.pem",
    "vapid_private_key": "Q7f9ra2V7oOeP8kGLsHdbEAuEP9mhYkmB1y8OHZOjR0",
    "vapid_subject": "mailto:ops@example.com",
    "push_events": ("chat.message", "deploy.done"),
    "push_delay": 4.5,
    "push_ttl": 3600,
    "push_allow_private": True,
    "push_max_subscriptions": 3,
    "push_max_in_flight": 20,
}


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)
    assert dataclasses.asdict(settings) == EXPECTED
    assert settings.production
    assert not settings.uses_sqlite


def test_the_test_covers_every_setting() -> None:
    names = {field.name for field in dataclasses.fields(Settings)}
    assert names == set(EXPECTED), "a new setting needs a variable here and in the README table"


def test_defaults_are_the_embedded_dev_mode() -> None:
    settings = Settings.from_env({})
    assert settings.env == "dev"
    assert not settings.production
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.uses_sqlite
    assert settings.redis_url is None
    assert settings.access_token_ttl == 900
    assert settings.refresh_token_ttl == 30 * 24 * 3600
    assert settings.ws_ping_interval == 20.0
    assert settings.parse_timeout == 30.0
    assert settings.parser_allow_private is False
    assert settings.allowed_origins == ()
    assert settings.hub_api_key is None
    assert settings.parser_service_token is None
    assert settings.exchange_service_url is None
    assert settings.exchange_service_token is None
    assert settings.trusted_proxies == ("127.0.0.1", "::1")
    assert settings.jwt_algorithm == "HS256"
    assert settings.chat_max_members == 1000
    assert settings.auth_rate_limit == 20
    assert (settings.chat_post_rate, settings.chat_post_burst) == (5.0, 20)
    assert (settings.login_failure_limit, settings.login_failure_window) == (10, 900)


def test_dev_mode_generates_a_secret_and_says_so() -> None:
    first, second = Settings.from_env({}), Settings.from_env({"HUB_ENV": "dev"})
    assert first.jwt_secret_generated
    assert len(first.jwt_secret) >= MIN_SECRET_LENGTH
    assert first.jwt_secret != second.jwt_secret
    given = Settings.from_env({"JWT_SECRET": "short dev secret"})
    assert given.jwt_secret == "short dev secret"
    assert not given.jwt_secret_generated


def test_secrets_are_not_in_repr() -> None:
    text = repr(Settings.from_env(EVERY_VARIABLE))
    for name in ("JWT_SECRET", "HUB_API_KEY", "PARSER_SERVICE_TOKEN", "EXCHANGE_SERVICE_TOKEN"):
        assert EVERY_VARIABLE[name] not in text


@pytest.mark.parametrize("secret", [None, "", "   ", "secret", "changeme", "CHANGEME", "change-me",
                                    "your-secret-key", "k" * (MIN_SECRET_LENGTH - 1)])
def test_production_refuses_a_missing_placeholder_or_short_secret(secret: str | None) -> None:
    environ = {"HUB_ENV": "production"}
    if secret is not None:
        environ["JWT_SECRET"] = secret
    with pytest.raises(ConfigError, match="JWT_SECRET") as raised:
        Settings.from_env(environ)
    assert "\n" not in str(raised.value)


WEAK_SECRETS = ["changeme", "x", "a" * 36, "k" * 64, "ab" * 20, "password1234" * 3,
                "0101010110101010010101011010101001"]


@pytest.mark.parametrize("weak", WEAK_SECRETS)
@pytest.mark.parametrize("name", ["JWT_SECRET", "HUB_API_KEY", "PARSER_SERVICE_TOKEN",
                                  "EXCHANGE_SERVICE_TOKEN"])
def test_production_refuses_weak_secrets_and_says_how_to_make_one(name: str, weak: str) -> None:
    environ = {"HUB_ENV": "production", "JWT_SECRET": GOOD_SECRET, name: weak}
    with pytest.raises(ConfigError, match=name) as raised:
        Settings.from_env(environ)
    message = str(raised.value)
    assert "\n" not in message
    assert "secrets.token_urlsafe(48)" in message
    assert weak not in message or len(weak) < 4  # the value is not echoed into logs
    assert Settings.from_env({**environ, "HUB_ENV": "dev"}).env == "dev"  # dev mode lets it pass


@pytest.mark.parametrize("good", [secrets.token_urlsafe(24), secrets.token_urlsafe(48),
                                  secrets.token_hex(16), secrets.token_hex(32), str(uuid.uuid4())])
def test_production_accepts_generated_secrets(good: str) -> None:
    environ = {"HUB_ENV": "production", "JWT_SECRET": good, "HUB_API_KEY": good,
               "PARSER_SERVICE_TOKEN": good, "EXCHANGE_SERVICE_TOKEN": good}
    assert Settings.from_env(environ).jwt_secret == good


@pytest.mark.parametrize(("name", "value"), [
    ("HUB_ENV", "staging"),
    ("HUB_ENV", "PRODUCTION"),
    ("DATABASE_URL", "mysql://root@localhost/hub"),
    ("DATABASE_URL", "hub.db"),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "127.0.0.1:6379"),
    ("REDIS_URL", "redis://a:6379,redis://b:6379"),  # several servers without REDIS_CLUSTER
    ("REDIS_CLUSTER", "yes"),
    ("REDIS_CLUSTER", "true"),  # without REDIS_URL
    ("JWT_ALGORITHM", "none"),
    ("JWT_ALGORITHM", "RS256"),
    ("ACCESS_TOKEN_TTL", "15m"),
    ("ACCESS_TOKEN_TTL", "1.5"),
    ("ACCESS_TOKEN_TTL", "0"),
    ("ACCESS_TOKEN_TTL", "-900"),
    ("REFRESH_TOKEN_TTL", "abc"),
    ("REFRESH_TOKEN_TTL", "59"),
    ("WS_PING_INTERVAL", "0"),
    ("WS_PING_INTERVAL", "nan"),
    ("WS_PING_INTERVAL", "inf"),
    ("WS_PING_INTERVAL", "twenty"),
    ("WS_AUTH_TIMEOUT", "-1"),
    ("WS_MAX_CONNECTIONS_PER_USER", "0"),
    ("WS_QUEUE_MAX_MESSAGES", "many"),
    ("WS_QUEUE_MAX_BYTES", "10"),
    ("WS_RATE_LIMIT", "0"),
    ("WS_RATE_BURST", "0"),
    ("WS_MAX_MESSAGE_BYTES", "100"),
    ("WS_MAX_FRAGMENTS", "0"),
    ("STREAM_TICKET_TTL", "0"),
    ("HTTP_HEADER_TIMEOUT", "0"),
    ("HTTP_HEADER_TIMEOUT", "inf"),
    ("HTTP_MAX_HEADER_BYTES", "512"),
    ("EXCHANGE_SERVICE_URL", "ftp://exchange"),
    ("EXCHANGE_SERVICE_URL", "exchange:8000"),
    ("PARSE_TIMEOUT", "0"),
    ("PARSE_TIMEOUT", "soon"),
    ("PARSE_MAX_PENDING", "0"),
    ("PARSER_ALLOW_PRIVATE", "yes"),
    ("EXCHANGE_RETRY_WINDOW", "0"),
    ("STREAM_RETENTION_EVENTS", "0"),
    ("STREAM_RETENTION_SECONDS", "1d"),
    ("CHAT_MAX_MEMBERS", "1"),
    ("CHAT_POST_RATE", "0"),
    ("CHAT_POST_RATE", "fast"),
    ("CHAT_POST_BURST", "0"),
    ("LOG_LEVEL", "verbose"),
    ("TRUSTED_PROXIES", "nginx"),
    ("TRUSTED_PROXIES", "10.0.0.1, 10.0.0.0/33"),
    ("AUTH_RATE_LIMIT", "0"),
    ("LOGIN_FAILURE_LIMIT", "ten"),
    ("LOGIN_FAILURE_WINDOW", "0"),
    ("CHAT_POST_BURST", "many"),
    ("CHAT_TYPING_INTERVAL", "0"),
    ("PRESENCE", "off"),
    ("PRESENCE_HEARTBEAT", "20"),
    ("PRESENCE_TTL", "29"),
    ("PRESENCE_TTL", "6"),  # less than twice the default heartbeat
    ("PRESENCE_OFFLINE_GRACE", "5"),
    ("ALLOWED_ORIGINS", "https://chat.example/app"),
    ("ALLOWED_ORIGINS", "chat.example"),
    ("ALLOWED_ORIGINS", "https://chat.example, null"),
])
def test_a_bad_value_is_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert name in message
    assert "\n" not in message
    assert len(message) < 300


def test_blank_values_mean_the_default() -> None:
    # Lists are the exception: TRUSTED_PROXIES="" deliberately trusts no proxy at all.
    blank = {name: "" for name in EVERY_VARIABLE if name != "TRUSTED_PROXIES"}
    settings = Settings.from_env(blank)
    defaults = Settings.from_env({})
    for field in dataclasses.fields(Settings):
        if field.name != "jwt_secret":
            assert getattr(settings, field.name) == getattr(defaults, field.name), field.name
    assert Settings.from_env({"TRUSTED_PROXIES": ""}).trusted_proxies == ()


def test_values_are_trimmed() -> None:
    settings = Settings.from_env({"ACCESS_TOKEN_TTL": " 60 ", "HUB_ENV": " dev ",
                                  "REDIS_URL": " redis://127.0.0.1:6379/3 "})
    assert settings.access_token_ttl == 60
    assert settings.redis_url == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize(("given", "expected"), [
    ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("postgres://u:p@h:5432/db?sslmode=require", "postgresql+asyncpg://u:p@h:5432/db?sslmode=require"),
    ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("sqlite:///./hub.db", "sqlite+aiosqlite:///./hub.db"),
    ("sqlite+aiosqlite:////var/lib/hub.db", "sqlite+aiosqlite:////var/lib/hub.db"),
])
def test_database_urls_are_normalised(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    assert Settings.from_env({"DATABASE_URL": given}).database_url == expected


def test_origins_are_kept_as_browsers_send_them() -> None:
    settings = Settings.from_env({"ALLOWED_ORIGINS": "HTTPS://Chat.Example/, https://chat.example:443,"
                                                     " http://localhost:5173, https://[::1]:8443"})
    assert settings.allowed_origins == ("https://chat.example", "https://chat.example",
                                        "http://localhost:5173", "https://[::1]:8443")


def test_a_redis_cluster_is_named_by_one_or_several_node_urls() -> None:
    many = Settings.from_env({"REDIS_CLUSTER": "true",
                              "REDIS_URL": "redis://:pw@n1:7000, rediss://n2:7001"})
    assert many.redis_cluster
    assert Settings.from_env({"REDIS_CLUSTER": "true", "REDIS_URL": "redis://n1:7000/0"}).redis_cluster
    assert not Settings.from_env({"REDIS_URL": "redis://n1:7000"}).redis_cluster


@pytest.mark.parametrize(("url", "says"), [
    ("unix:///run/redis.sock", "redis:// or rediss://"),
    ("redis://n1:7000/3", "only database 0"),
    ("redis://n1:7000,n2:7001", "redis:// or rediss://"),
    ("redis://:7000", "names no host"),
])
def test_a_redis_cluster_url_is_checked(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Settings.from_env({"REDIS_CLUSTER": "true", "REDIS_URL": url})


def test_rediss_and_unix_socket_urls_are_accepted() -> None:
    assert Settings.from_env({"REDIS_URL": "rediss://h:6380"}).redis_url == "rediss://h:6380"
    assert Settings.from_env({"REDIS_URL": "unix:///run/redis.sock"}).redis_url == "unix:///run/redis.sock"


def test_the_readme_table_names_every_variable() -> None:
    root = Path(__file__).resolve().parent.parent
    source = (root / "hub" / "settings.py").read_text()
    variables = set(re.findall(r'\br\.\w+\("([A-Z][A-Z0-9_]+)"', source))
    assert set(EVERY_VARIABLE) == variables, "test_every_variable_is_read must set every variable"
    readme = (root / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert variables - documented == set(), "add these to the README's configuration table"
    assert documented - variables == set(), "the README documents variables the hub does not read"
