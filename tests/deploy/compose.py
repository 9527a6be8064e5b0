"""docker-compose.yml as an operator's compose would render it: the real compose binary's
`config` (no engine needed) on a copy of the file with a given .env."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.deploy.processes import REPO

TOOLS = Path(sys.executable).parent


def run(command: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def compose_project(directory: Path, env_text: str) -> Path:
    """A copy of the compose file with .env made from `env_text`, as an operator would have it."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "docker-compose.yml", directory / "docker-compose.yml")
    (directory / ".env").write_text(env_text)
    return directory


def compose_config(project: Path) -> dict[str, Any]:
    """The rendered configuration: every service's environment merged from .env and the file."""
    done = run([str(TOOLS / "docker-compose"), "config", "--quiet"], cwd=project)
    assert done.returncode == 0, done.stderr
    done = run([str(TOOLS / "docker-compose"), "config", "--format", "json"], cwd=project)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config
