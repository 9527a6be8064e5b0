"""The `hub` command, run as a subprocess: help, migrate, configuration errors, serve and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from hub.migrate import alembic_config
from hub.settings import Settings
from tests.conftest import REDIS_BASE_URL, RUN_ID, free_port, private_database

HUB = str(Path(sys.executable).with_name("hub"))
HUB_VARIABLES = ("HUB_ENV", "DATABASE_URL", "REDIS_URL", "JWT_SECRET", "REDIS_CHANNEL_PREFIX")


def hub_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The current environment without any hub variable, on a SQLite file of `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    env["DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env.update(overrides)
    return env


def run_hub(args: list[str], env: dict[str, str], cwd: Path,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HUB, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = run_hub(["--help"], hub_env(tmp_path), tmp_path)
    assert done.returncode == 0
    assert "serve" in done.stdout
    assert "migrate" in done.stdout
    serve_help = run_hub(["serve", "--help"], hub_env(tmp_path), tmp_path)
    assert serve_help.returncode == 0
    for option in ("--host", "--port", "--workers"):
        assert option in serve_help.stdout


def test_python_dash_m_hub_is_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hub", "--help"], env=hub_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    assert "migrate" in done.stdout


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    with private_database("cli") as url:
        yield url


def test_migrate_a_fresh_postgres_database(tmp_path: Path, fresh_postgres: str) -> None:
    env = hub_env(tmp_path, DATABASE_URL=fresh_postgres)
    first = run_hub(["migrate"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "latest migration" in first.stdout
    again = run_hub(["migrate"], env, tmp_path)  # idempotent
    assert again.returncode == 0, again.stderr

    async def inspect() -> tuple[set[str], set[str]]:
        connection = await asyncpg.connect(fresh_postgres, timeout=10)
        try:
            tables = {row["tablename"] for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            versions = {row["version_num"] for row in await connection.fetch(
                "SELECT version_num FROM alembic_version")}
        finally:
            await connection.close()
        return tables, versions

    tables, versions = asyncio.run(inspect())
    assert {"users", "streams", "events", "idempotency_keys", "credentials", "refresh_tokens"} <= tables
    heads = set(ScriptDirectory.from_config(alembic_config(fresh_postgres)).get_heads())
    assert versions == heads


def test_migrate_an_unreachable_database_fails_without_a_traceback(tmp_path: Path) -> None:
    env = hub_env(tmp_path, DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    done = run_hub(["migrate"], env, tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("variables", "named"), [
    ({"HUB_ENV": "production"}, "JWT_SECRET"),
    ({"HUB_ENV": "production", "JWT_SECRET": "changeme"}, "JWT_SECRET"),
    ({"ACCESS_TOKEN_TTL": "fifteen minutes"}, "ACCESS_TOKEN_TTL"),
    ({"DATABASE_URL": "mysql://localhost/hub"}, "DATABASE_URL"),
    ({"HUB_ENV": "prod"}, "HUB_ENV"),
    ({"VAPID_PRIVATE_KEY": "not-a-key"}, "VAPID_PRIVATE_KEY"),
    ({"VAPID_PRIVATE_KEY": "Q7f9ra2V7oOeP8kGLsHdbEAuEP9mhYkmB1y8OHZOjR0"}, "VAPID_SUBJECT"),
])
@pytest.mark.parametrize("command", [["serve"], ["migrate"]])
def test_a_configuration_error_is_one_line_and_non_zero(tmp_path: Path, variables: dict[str, str],
                                                         named: str, command: list[str]) -> None:
    done = run_hub(command, hub_env(tmp_path, **variables), tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert named in lines[0]
    assert lines[0].startswith("hub: configuration error:")


def test_vapid_keys_prints_a_usable_key(tmp_path: Path) -> None:
    done = run_hub(["vapid-keys"], hub_env(tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if not line.startswith("#"))
    settings = Settings.from_env({**lines, "VAPID_SUBJECT": "mailto:ops@example.com"})
    assert settings.push_enabled


def test_several_workers_without_redis_are_refused(tmp_path: Path) -> None:
    done = run_hub(["serve", "--workers", "2", "--port", str(free_port())], hub_env(tmp_path), tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL" in lines[0]
    assert "--workers 2" in lines[0]


def test_zero_workers_are_refused(tmp_path: Path) -> None:
    done = run_hub(["serve", "--workers", "0"], hub_env(tmp_path), tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1


def _serve_then_sigterm(args: list[str], env: dict[str, str], cwd: Path, port: int) -> str:
    process = subprocess.Popen([HUB, "serve", "--port", str(port), *args], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate(timeout=5)[0]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except httpx.TransportError:
                assert time.monotonic() < deadline, "hub serve did not answer /healthz within 30 s"
                time.sleep(0.1)
                continue
            assert response.status_code == 200
            assert response.json() == {"status": "ok"}
            break
        registered = httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/register", timeout=10,
                                json={"username": "cli_user", "password": "long enough"})
        assert registered.status_code == 201
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert "Traceback" not in output
    return output


def test_serve_answers_healthz_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    output = _serve_then_sigterm([], hub_env(tmp_path), tmp_path, free_port())
    assert "dev mode generated" in output  # dev mode says it made up a secret
    assert (tmp_path / "cli.db").exists()  # embedded mode migrated its SQLite file at start


def test_serve_with_gunicorn_workers_exits_0_on_sigterm(tmp_path: Path) -> None:
    env = hub_env(tmp_path, REDIS_URL=f"{REDIS_BASE_URL}/0",
                  REDIS_CHANNEL_PREFIX=f"cli{RUN_ID}:", JWT_SECRET="cli-" + "s" * 40)
    _serve_then_sigterm(["--workers", "2"], env, tmp_path, free_port())
