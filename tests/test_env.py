"""hub.env: the one environment reader of the hub and of its standalone services, and the one
line with exit status 2 that each program prints for a bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import pytest

from hub.env import CONFIG_ERROR_STATUS, HTTP_URL_SCHEMES, ConfigError, EnvReader
from hub.settings import Settings
from parser_bridge.exchange_service import ServiceConfig
from parser_bridge.worker import WorkerConfig

WORKER = {"REDIS_URL": "redis://127.0.0.1:6379/15"}
EXCHANGE = {"EXCHANGE_SERVICE_TOKEN": "t0ken"}


def test_reader_bounds_and_defaults() -> None:
    r = EnvReader({"A": " 7 ", "B": "", "C": "2.5", "F": "1", "U": "https://x"})
    assert r.integer("A", 1, minimum=1, maximum=10) == 7
    assert r.integer("B", 3, minimum=1) == 3  # blank means the default
    assert r.number("C", 1.0, minimum=0.1, maximum=3) == 2.5
    assert r.flag("F") is True and r.flag("unset") is False
    assert r.url("U", HTTP_URL_SCHEMES, "http://default") == "https://x"
    assert r.url("unset", HTTP_URL_SCHEMES, "http://default") == "http://default"
    for call in (lambda: r.integer("A", 1, minimum=8), lambda: r.integer("A", 1, minimum=1, maximum=6),
                 lambda: r.integer("C", 1, minimum=1), lambda: r.number("C", 1, minimum=0, maximum=2),
                 lambda: r.flag("A"), lambda: r.required("B", "a value"),
                 lambda: r.required_url("U", ("redis://",), "a Redis URL")):
        with pytest.raises(ConfigError) as raised:
            call()
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("read", "environ", "name"), [
    (Settings.from_env, {"PARSE_TIMEOUT": "nan"}, "PARSE_TIMEOUT"),
    (WorkerConfig.from_env, {**WORKER, "PARSER_CONCURRENCY": "1.5"}, "PARSER_CONCURRENCY"),
    (WorkerConfig.from_env, {**WORKER, "PARSER_FETCH_TIMEOUT": "inf"}, "PARSER_FETCH_TIMEOUT"),
    (WorkerConfig.from_env, {**WORKER, "PARSER_ALLOW_PRIVATE": "yes"}, "PARSER_ALLOW_PRIVATE"),
    (WorkerConfig.from_env, {**WORKER, "PARSER_ALLOW_NETWORKS": "10.0.0.0/33"}, "PARSER_ALLOW_NETWORKS"),
    (WorkerConfig.from_env, {**WORKER, "LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    (WorkerConfig.from_env, {"REDIS_URL": "127.0.0.1:6379"}, "REDIS_URL"),
    (ServiceConfig.from_env, {}, "EXCHANGE_SERVICE_TOKEN"),
    (ServiceConfig.from_env, {**EXCHANGE, "HUB_URL": "hub:8000"}, "HUB_URL"),
    (ServiceConfig.from_env, {**EXCHANGE, "EXCHANGE_RESULT_RETRY_WINDOW": "0"},
     "EXCHANGE_RESULT_RETRY_WINDOW"),
    (ServiceConfig.from_env, {**EXCHANGE, "EXCHANGE_DELAY": "3-1"}, "EXCHANGE_DELAY"),
])
def test_every_program_refuses_a_bad_value_with_the_one_error(
        read: object, environ: Mapping[str, str], name: str) -> None:
    assert callable(read)
    with pytest.raises(ConfigError) as raised:
        read(environ)
    assert name in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_services_read_their_defaults() -> None:
    worker = WorkerConfig.from_env(WORKER)
    assert (worker.concurrency, worker.fetch_timeout, worker.allow_private) == (8, 10.0, False)
    service = ServiceConfig.from_env(EXCHANGE)
    assert (service.hub_url, service.delay, service.result_retry_window) == (
        "http://127.0.0.1:8000", (1.0, 3.0), 60.0)


@pytest.mark.parametrize(("module", "program", "environ", "name"), [
    ("hub", "hub", {"HUB_ENV": "staging"}, "HUB_ENV"),
    ("parser_bridge.worker", "parser worker", {**WORKER, "PARSER_CONCURRENCY": "1.5"},
     "PARSER_CONCURRENCY"),
    ("parser_bridge.exchange_service", "exchange service", {"EXCHANGE_SERVICE_TOKEN": ""},
     "EXCHANGE_SERVICE_TOKEN"),
])
def test_a_program_prints_one_line_and_exits_2(module: str, program: str,
                                               environ: Mapping[str, str], name: str) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HUB_", "PARSER_", "EXCHANGE_", "REDIS_", "JWT_", "DATABASE_"))}
    args = ["serve"] if module == "hub" else []
    done = subprocess.run([sys.executable, "-m", module, *args], env={**env, **environ},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == CONFIG_ERROR_STATUS, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{program}: configuration error: {name}")
