"""A real web server on 127.0.0.1 serving the pages the parser tests fetch."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port

TITLE = "Hello <from> the “test” page"
PAGE = ("<!doctype html><html><head><meta charset='utf-8'>"
        "<title>  Hello &lt;from&gt; the\n “test” page </title></head>"
        "<body><svg><title>not this</title></svg><p>body</p></body></html>")

# NUL bytes in the title and the body, and a charset Python cannot decode with replacement
NUL_PAGE = (b"<html><head><meta charset='idna'><title>Nul\x00 in\x00 the title</title></head>"
            b"<body>a\x00b\x00\x00c</body></html>")
NUL_PAGE_CLEANED = NUL_PAGE.decode().replace("\x00", "")


@dataclass
class PageServer:
    base_url: str
    hits: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # how many requests to /hang hang until `release` (the rest answer at once)
    hang_first: int = 1_000_000

    def url(self, path: str) -> str:
        return self.base_url + path


def _app(server: PageServer) -> Starlette:
    async def page(request: Request) -> Response:
        server.hits["page"] += 1
        return Response(PAGE, media_type="text/html; charset=utf-8")

    async def hang(request: Request) -> Response:
        server.hits["hang"] += 1
        if server.hits["hang"] <= server.hang_first:
            await server.release.wait()
        return Response(PAGE, media_type="text/html")

    async def redirect(request: Request) -> Response:
        server.hits["redirect"] += 1
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def loop(request: Request) -> Response:
        n = int(request.path_params["n"])
        return RedirectResponse(f"/loop/{n + 1}", status_code=301)

    async def big(request: Request) -> Response:
        chunk = b"<p>" + b"x" * 65536 + b"</p>"

        async def body() -> AsyncIterator[bytes]:
            yield b"<html><head><title>big</title></head><body>"
            for _ in range(100):  # about 6.5 MiB, no Content-Length
                yield chunk

        return StreamingResponse(body(), media_type="text/html")

    async def bomb(request: Request) -> Response:
        body = gzip.compress(b"<html><title>bomb</title>" + b" " * (64 * 1024 * 1024))
        return Response(body, media_type="text/html", headers={"Content-Encoding": "gzip"})

    async def image(request: Request) -> Response:
        return Response(b"\x89PNG\r\n", media_type="image/png")

    async def nul(request: Request) -> Response:
        return Response(NUL_PAGE, headers={"Content-Type": "text/html"})  # the meta decides

    async def slow(request: Request) -> Response:
        server.hits["slow"] += 1
        await asyncio.sleep(float(request.query_params.get("delay", "2")))
        return Response(PAGE, media_type="text/html")

    async def cp1251(request: Request) -> Response:
        return Response("<title>Привет</title>".encode("cp1251"),
                        media_type="text/html; charset=windows-1251")

    return Starlette(routes=[
        Route("/page", page), Route("/hang", hang), Route("/redirect", redirect),
        Route("/loop/{n:int}", loop), Route("/big", big), Route("/bomb", bomb),
        Route("/image", image), Route("/cp1251", cp1251), Route("/nul", nul), Route("/slow", slow),
    ])


@contextlib.asynccontextmanager
async def serve_pages() -> AsyncIterator[PageServer]:
    port = free_port()
    server = PageServer(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(_app(server), host="127.0.0.1", port=port, lifespan="off",
                            access_log=False, log_config=None, timeout_graceful_shutdown=1)
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    async with asyncio.timeout(10):
        while not uv.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.release.set()
        uv.should_exit = True
        async with asyncio.timeout(10):
            await task
