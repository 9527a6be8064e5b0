# syntax=docker/dockerfile:1
# The hub, its parser worker and its exchange service: one image, installed from uv.lock.
#   docker build -t notification-hub .
#   docker run --env-file .env notification-hub                      # hub serve, HUB_WORKERS workers
#   docker run --env-file .env notification-hub hub migrate
#   docker run --env-file .env notification-hub python -m parser_bridge.worker

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# uv at the version scripts/bootstrap pins.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the lock file changes. Only the
# runtime ones: --no-default-groups leaves out the groups a plain `uv sync` adds (dev, bench).
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-default-groups --no-install-project
# Then the project itself, as a regular (non-editable) install: the runtime needs no sources.
COPY README.md ./
COPY hub ./hub
COPY auth ./auth
COPY chat ./chat
COPY parser_bridge ./parser_bridge
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-default-groups --no-editable

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 hub \
    && useradd --system --uid 10001 --gid hub --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin hub
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HUB_ENV=production \
    HUB_WORKERS=2
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# gunicorn with uvicorn workers when HUB_WORKERS > 1 (hub.server); SIGTERM closes sockets with 1012.
STOPSIGNAL SIGTERM
CMD ["/bin/sh", "-c", "exec hub serve --host 0.0.0.0 --port 8000 --workers \"${HUB_WORKERS}\""]
