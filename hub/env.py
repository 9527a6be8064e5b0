"""Reading the environment into validated plain values: one reader and one error for the hub
(`hub.settings`) and for the standalone services of its features (`python -m
parser_bridge.worker`, `python -m parser_bridge.exchange_service`).

Every program reads its environment once at start-up. Unset and blank both mean the default; a
bad value raises `ConfigError`, whose message is one line that names the variable and says how
to fix it (never echoing a secret); the program prints it with `report` and exits 2.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")
HTTP_URL_SCHEMES = ("http://", "https://")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CONFIG_ERROR_STATUS = 2  # the exit status of a program refusing its configuration


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message is one line for the operator."""


def report(program: str, error: ConfigError) -> int:
    """Print `<program>: configuration error: <message>` to stderr; return the exit status."""
    print(f"{program}: configuration error: {error}", file=sys.stderr)
    return CONFIG_ERROR_STATUS


class EnvReader:
    """Typed, validated reads of one environment mapping; each raises `ConfigError`."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str, default: str) -> str:
        """The trimmed value; unset and blank both mean the default."""
        return self._environ.get(name, "").strip() or default

    def required(self, name: str, what: str) -> str:
        """The trimmed value, which must be set; `what` completes "NAME must be set to ..."."""
        value = self.text(name, "")
        if not value:
            raise ConfigError(f"{name} must be set to {what}")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        return value

    def flag(self, name: str) -> bool:
        """`1` is on; `0`, unset and blank are off; anything else is refused."""
        return self.choice(name, "0", ("0", "1")) == "1"

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} is below its minimum of {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}={value} is above its maximum of {maximum}")
        return value

    def number(self, name: str, default: float, minimum: float,
               maximum: float | None = None) -> float:
        """A finite number (NaN and infinities are refused) within the bounds."""
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if maximum is not None and not minimum <= value <= maximum:
            raise ConfigError(f"{name}={raw} must be a number from {minimum:g} to {maximum:g}")
        if not value >= minimum or value == float("inf"):
            raise ConfigError(f"{name}={raw} must be a finite number of at least {minimum:g}")
        return value

    def optional_url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        """The URL, or None when unset; refused unless it starts with one of `schemes`."""
        value = self.text(name, "")
        if not value:
            return None
        if not value.startswith(schemes):
            raise ConfigError(f"{name} must start with {' or '.join(schemes)}")
        return value

    def url(self, name: str, schemes: tuple[str, ...], default: str) -> str:
        found = self.optional_url(name, schemes)
        return default if found is None else found

    def required_url(self, name: str, schemes: tuple[str, ...], what: str) -> str:
        found = self.optional_url(name, schemes)
        if found is None:
            raise ConfigError(f"{name} must be set to {what}")
        return found

    def parsed(self, name: str, parse: Callable[[str], T]) -> T:
        """`parse` of the trimmed value (blank included); its ValueError becomes a ConfigError
        naming the variable, so the parser's message should say what a good value looks like."""
        try:
            return parse(self.text(name, ""))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def csv(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Comma-separated values; unset means the default, blank means none at all."""
        raw = self._environ.get(name)
        if raw is None:
            return default
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    def redis_cluster(self, name: str) -> bool:
        """`name` (REDIS_CLUSTER: `true`/`false`), checked with REDIS_URL: a cluster needs one or
        more comma-separated `redis://`/`rediss://` node URLs; several URLs need a cluster."""
        from hub.redis_clients import cluster_url_problem

        cluster = self.choice(name, "false", ("false", "true")) == "true"
        url = self.text("REDIS_URL", "")
        if cluster:
            if not url:
                raise ConfigError("REDIS_CLUSTER=true needs REDIS_URL: one or more comma-separated "
                                  "redis:// or rediss:// URLs of cluster nodes")
            problem = cluster_url_problem(url)
            if problem is not None:
                raise ConfigError(f"REDIS_URL with REDIS_CLUSTER=true: {problem}")
        elif "," in url:
            raise ConfigError("REDIS_URL lists several servers: set REDIS_CLUSTER=true for a Redis "
                              "Cluster, or give one URL")
        return cluster

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """Comma-separated IP addresses or CIDR networks."""
        found = self.csv(name, default)
        for value in found:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ConfigError(f"{name}: {value!r} is not an IP address or a network like "
                                  "10.0.0.0/8") from None
        return found
