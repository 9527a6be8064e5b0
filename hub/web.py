"""The chat web front end: `/` and `/static/<file>` from the files shipped in `hub/static/`.

Only the files named in `STATIC_FILES` are served (no directory walking, so no path tricks), each
with headers that keep the page's scripts our own: a Content-Security-Policy without inline
scripts, `nosniff`, no framing and no referrer. The page talks to the hub only through the
public contract (REST under `/api/v1`, the `/ws` socket).
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from hub.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "presence.js": "text/javascript; charset=utf-8",
    "user_search.js": "text/javascript; charset=utf-8",
    "hub-client.js": "text/javascript; charset=utf-8",
    "notifications.js": "text/javascript; charset=utf-8",
    "push.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# A Host header we are willing to repeat inside the policy: a name or address and a port, nothing
# that could end a directive (`;`, spaces, quotes).
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The page's policy. Scripts, styles and images come only from this origin; sockets go to
    this origin's `/ws` (named explicitly, since older browsers do not let `'self'` cover ws:)."""
    connect = "'self'"
    if host is not None and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        f"connect-src {connect}",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


def security_headers(host: str | None) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(host),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
        # Revalidate on every load so a deploy is picked up at once (the files are small).
        "Cache-Control": "no-cache",
    }


class WebFront:
    """Serves the page and its static files. Reads nothing until a request asks for a file."""

    def __init__(self, static_dir: Path = STATIC_DIR) -> None:
        self._dir = static_dir

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index, methods=["GET", "HEAD"]),
            Route("/static/{name:str}", self.static, methods=["GET", "HEAD"]),
            Route("/sw.js", self.service_worker, methods=["GET", "HEAD"]),
        ]

    async def index(self, request: Request) -> Response:
        return self._file(request, "index.html", "text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            raise NotFound(f"no static file {name!r}; the page uses only {', '.join(STATIC_FILES)}")
        return self._file(request, name, media_type)

    async def service_worker(self, request: Request) -> Response:
        """The Web Push service worker (§13), at the root so that its scope is the whole page."""
        response = self._file(request, "sw.js", "text/javascript; charset=utf-8")
        response.headers["Service-Worker-Allowed"] = "/"
        return response

    def _file(self, request: Request, name: str, media_type: str) -> Response:
        path = self._dir / name
        if not path.is_file():
            raise NotFound(f"{name} is missing from the installed package ({self._dir})")
        return FileResponse(path, media_type=media_type,
                            headers=security_headers(request.headers.get("host")))
