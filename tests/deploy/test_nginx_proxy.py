"""Debian's nginx runs the project's own templates (rendered as the official image renders them)
in front of `hub serve --workers 2`: TLS from a CA only the clients trust, WebSockets through the
upgrade map, idle sockets kept alive by the hub's pings, redirects, rate limits, a clean log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import register
from tests.deploy.conftest import DOMAIN, client_tls, public_client, ws_options, ws_url
from tests.deploy.processes import HubProcess, Nginx, free_port, ipv6_loopback, nginx_env, running_nginx
from tests.deploy.tls_ca import ThrowawayCA
from tests.sseutil import open_stream
from tests.sseutil import ticket as stream_ticket
from tests.wsutil import Socket, connect

# Short enough that an idle test outlives it several times; the hub pings every second.
WS_READ_TIMEOUT = 3.0
# How long old workers keep connections after a reload.
WORKER_SHUTDOWN_TIMEOUT = 3.0


@contextlib.contextmanager
def _proxy(root: Path, hub: HubProcess, ca: ThrowawayCA, **limits: str) -> Iterator[Nginx]:
    http_port, https_port = free_port(), free_port()
    env = nginx_env(root, domain=DOMAIN, upstream=f"127.0.0.1:{hub.port}", http_port=http_port,
                    https_port=https_port, NGINX_WS_READ_TIMEOUT=f"{WS_READ_TIMEOUT:g}s",
                    NGINX_WORKER_SHUTDOWN_TIMEOUT=f"{WORKER_SHUTDOWN_TIMEOUT:g}s", **limits)
    live = root / "letsencrypt" / "served" / DOMAIN
    ca.issue([DOMAIN], live / "fullchain.pem", live / "privkey.pem")
    with running_nginx(Nginx(root, env, http_port, https_port)) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def proxy(deploy_root: Path, deploy_hub: HubProcess, test_ca: ThrowawayCA) -> Iterator[Nginx]:
    with _proxy(deploy_root / "proxy", deploy_hub, test_ca) as nginx:
        yield nginx


@pytest.fixture(scope="module")
def limited_proxy(deploy_root: Path, deploy_hub: HubProcess, test_ca: ThrowawayCA) -> Iterator[Nginx]:
    """An nginx of its own with tight refresh and ticket limits: the test that exhausts them must
    not leave the other tests' proxy refusing their logins."""
    with _proxy(deploy_root / "limited-proxy", deploy_hub, test_ca,
                NGINX_REFRESH_RATE="20r/m", NGINX_REFRESH_BURST="2",
                NGINX_TICKET_RATE="12r/m", NGINX_TICKET_BURST="2") as nginx:
        yield nginx


async def open_socket(proxy: Nginx, token: str, tls: ssl.SSLContext) -> Socket:
    """wss://DOMAIN:port/ws through nginx, authenticated, welcome read."""
    return await connect(ws_url(proxy.https_port), token, **ws_options(proxy.https_port, tls))


@pytest.fixture
def tls(test_ca: ThrowawayCA) -> ssl.SSLContext:
    return client_tls(test_ca.ca_file)


def test_rendered_config_has_no_unset_variable_and_passes_nginx_t(proxy: Nginx) -> None:
    rendered = sorted(proxy.conf.parent.rglob("*.conf"))
    names = [path.relative_to(proxy.conf.parent).as_posix() for path in rendered]
    assert names == ["hub/site.conf", "nginx.conf"]
    for path in rendered:
        assert "${" not in path.read_text(), f"{path} still holds a template variable"
    site = (proxy.conf.parent / "hub" / "site.conf").read_text()
    assert f"proxy_read_timeout {WS_READ_TIMEOUT:g}s;" in site
    checked = proxy.test_config()
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


async def _handshake(port: int, context: ssl.SSLContext, server_name: str = DOMAIN) -> ssl.SSLObject:
    async with asyncio.timeout(10):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname=server_name)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        return ssl_object
    finally:
        writer.close()
        async with asyncio.timeout(5):
            await writer.wait_closed()


async def test_tls_is_mozilla_intermediate_with_hsts(proxy: Nginx, tls: ssl.SSLContext,
                                                     test_ca: ThrowawayCA) -> None:
    async with public_client(proxy.https_port, tls) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["strict-transport-security"] == "max-age=63072000"
    assert "nginx/" not in response.headers.get("server", "")

    assert (await _handshake(proxy.https_port, tls)).version() == "TLSv1.3"

    tls12 = client_tls(test_ca.ca_file)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    negotiated = await _handshake(proxy.https_port, tls12)
    assert negotiated.version() == "TLSv1.2"
    cipher = negotiated.cipher()
    assert cipher is not None
    assert cipher[0] in MOZILLA_INTERMEDIATE_TLS12

    # A CBC suite that nginx's default cipher list would accept: not in the profile.
    cbc = client_tls(test_ca.ca_file)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(ssl.SSLError):
        await _handshake(proxy.https_port, cbc)

    legacy = client_tls(test_ca.ca_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # offering TLS 1.1 is the point
        legacy.minimum_version = ssl.TLSVersion.TLSv1
        legacy.maximum_version = ssl.TLSVersion.TLSv1_1
    legacy.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        await _handshake(proxy.https_port, legacy)

    # A name that is not ours gets no certificate at all (ssl_reject_handshake).
    with pytest.raises(ssl.SSLError):
        await _handshake(proxy.https_port, tls, server_name="other.example.test")


MOZILLA_INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}


async def test_plain_http_redirects_to_https_except_the_acme_webroot(proxy: Nginx) -> None:
    challenge = proxy.root / "webroot" / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / "token-123").write_text("token-123.thumbprint")
    async with public_client(proxy.http_port, False, scheme="http") as http:
        redirected = await http.get("/api/v1/auth/me?after=5")
        acme = await http.get("/.well-known/acme-challenge/token-123")
        missing = await http.get("/.well-known/acme-challenge/nope")
    assert redirected.status_code == 301
    assert redirected.headers["location"] == f"https://{DOMAIN}:{proxy.https_port}/api/v1/auth/me?after=5"
    assert acme.status_code == 200
    assert acme.text == "token-123.thumbprint"
    assert missing.status_code == 404

    # Another Host gets no redirect to anywhere: nginx closes the connection (444).
    async with public_client(proxy.http_port, False, scheme="http", domain="evil.example.test") as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")


async def test_wss_client_registers_connects_and_receives_a_live_event(
        proxy: Nginx, deploy_hub: HubProcess, tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        account = await register(http)
        socket = await open_socket(proxy, account.access_token, tls)
        try:
            assert socket.welcome["user_id"] == account.id
            published = await http.post(
                "/api/v1/publish", json={"user_ids": [account.id], "name": "deploy.check", "data": {"n": 1}},
                headers={"Authorization": f"Bearer {deploy_hub.env['HUB_API_KEY']}"})
            assert published.status_code == 202, published.text
            event = await socket.next()
            assert event["type"] == "event"
            assert event["name"] == "deploy.check"
            assert event["data"] == {"n": 1}
            assert event["id"] == published.json()["events"][str(account.id)]
        finally:
            await socket.close()


async def test_idle_socket_outlives_proxy_read_timeout(proxy: Nginx, deploy_hub: HubProcess,
                                                       tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        account = await register(http)
        socket = await open_socket(proxy, account.access_token, tls)
        try:
            # Nothing from the application for three read timeouts: only the hub's protocol pings
            # (every second) cross nginx, and they are what keeps the socket open.
            await socket.silent(3 * WS_READ_TIMEOUT)
            await socket.send({"type": "ping"})
            assert (await socket.next())["type"] == "pong"
            published = await http.post(
                "/api/v1/publish", json={"user_ids": [account.id], "name": "deploy.after_idle"},
                headers={"Authorization": f"Bearer {deploy_hub.env['HUB_API_KEY']}"})
            assert published.status_code == 202, published.text
            assert (await socket.next())["name"] == "deploy.after_idle"
        finally:
            await socket.close()


async def test_access_log_never_holds_query_strings_or_credentials(proxy: Nginx, tls: ssl.SSLContext) -> None:
    query_secret = secrets.token_hex(16)
    header_secret = secrets.token_hex(16)
    async with public_client(proxy.https_port, tls) as http:
        answer = await http.get(f"/api/v1/auth/me?access_token={query_secret}",
                                headers={"Authorization": f"Bearer {header_secret}"})
        assert answer.status_code == 401
        account = await register(http)
        socket = await open_socket(proxy, account.access_token, tls)
        await socket.close()
    await asyncio.sleep(0.2)
    log = proxy.access_log.read_text()
    assert "/api/v1/auth/me" in log
    assert '"GET /ws HTTP/1.1" 101' in log
    for secret in (query_secret, header_secret, account.access_token, account.password, "access_token="):
        assert secret not in log
    for line in log.splitlines():
        assert "?" not in line.split('"')[1], line


async def test_burst_of_logins_meets_the_rate_limit_in_the_api_error_shape(proxy: Nginx,
                                                                            tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        answers = await asyncio.gather(*(
            http.post("/api/v1/auth/login", json={"username": "nobody_here", "password": "wrong password"})
            for _ in range(15)))
    statuses = sorted(answer.status_code for answer in answers)
    assert 401 in statuses
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited, statuses
    assert limited[0].json()["error"] == "rate_limited"
    assert limited[0].headers["content-type"] == "application/json"


async def test_burst_of_websocket_upgrades_meets_the_rate_limit(proxy: Nginx, tls: ssl.SSLContext) -> None:
    async def upgrade() -> int:
        try:
            async with asyncio.timeout(10):
                ws = await websockets.connect(ws_url(proxy.https_port), **ws_options(proxy.https_port, tls))
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return 101

    statuses = await asyncio.gather(*(upgrade() for _ in range(25)))
    assert statuses.count(101) >= 1, statuses
    assert statuses.count(429) >= 10, statuses
    assert set(statuses) == {101, 429}, statuses
    # Plain (non-upgrade) requests do not count against the upgrade limit.
    async with public_client(proxy.https_port, tls) as http:
        plain = await asyncio.gather(*(http.get("/healthz") for _ in range(10)))
    assert {answer.status_code for answer in plain} == {200}
    await asyncio.sleep(2)  # let the bucket drain for whoever comes next


async def test_metrics_are_not_public(proxy: Nginx, tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 404
    assert json.loads(answer.text)["error"] == "not_found"


async def test_limited_answers_name_the_refill_time_in_retry_after(limited_proxy: Nginx,
                                                                   tls: ssl.SSLContext) -> None:
    """Each limit's 429 says when the next request passes: one request's refill time (refresh at
    20r/m: 3 s; stream tickets at 12r/m: 5 s; logins at 60r/m: 1 s), and that is true."""
    # Each login names another user: the hub's own per-username limit must not be the one that trips.
    cases: list[tuple[str, Callable[[int], dict[str, str]], int]] = [
        ("/api/v1/auth/refresh", lambda _: {"refresh_token": "not.a.token"}, 3),
        ("/api/v1/stream/tickets", lambda _: {}, 5),
        ("/api/v1/auth/login", lambda n: {"username": f"nobody_{n}", "password": "wrong password"}, 1),
    ]
    async with public_client(limited_proxy.https_port, tls) as http:
        for path, body_of, refill in cases:
            answers = await asyncio.gather(*(http.post(path, json=body_of(n)) for n in range(15)))
            limited = [answer for answer in answers if answer.status_code == 429]
            assert limited, (path, [answer.status_code for answer in answers])
            for answer in limited:
                assert answer.headers["retry-after"] == str(refill), path
                assert answer.json()["error"] == "rate_limited"
                assert answer.headers["x-content-type-options"] == "nosniff"
                assert answer.headers["strict-transport-security"] == "max-age=63072000"
            await asyncio.sleep(refill + 0.2)
            passed = await http.post(path, json=body_of(15))
            assert passed.status_code != 429, (path, passed.text)


async def test_nginx_own_error_pages_carry_nosniff(proxy: Nginx, tls: ssl.SSLContext) -> None:
    # 413: a body over client_max_body_size, refused by nginx itself.
    async with public_client(proxy.https_port, tls) as http:
        too_large = await http.post("/api/v1/publish", content=b"x" * (3 * 1024 * 1024),
                                    headers={"Content-Type": "application/json"})
    assert too_large.status_code == 413
    assert too_large.json()["error"] == "too_large"
    assert too_large.headers["x-content-type-options"] == "nosniff"

    # 502 from a hub that is not there, answered as the API's 503.
    root = proxy.root.parent / "proxy-no-hub"
    http_port, https_port = free_port(), free_port()
    env = nginx_env(root, domain=DOMAIN, upstream=f"127.0.0.1:{free_port()}", http_port=http_port,
                    https_port=https_port)
    (root / "letsencrypt" / "served").mkdir(parents=True, exist_ok=True)
    shutil.copytree(proxy.root / "letsencrypt" / "served" / DOMAIN, root / "letsencrypt" / "served" / DOMAIN,
                    dirs_exist_ok=True)
    with running_nginx(Nginx(root, env, http_port, https_port)):
        async with public_client(https_port, tls) as http:
            unavailable = await http.get("/healthz")
    assert unavailable.status_code == 503
    assert unavailable.json()["error"] == "unavailable"
    assert unavailable.headers["retry-after"] == "5"
    assert unavailable.headers["x-content-type-options"] == "nosniff"
    assert unavailable.headers["strict-transport-security"] == "max-age=63072000"


async def test_text_assets_are_compressed_but_token_answers_are_not(proxy: Nginx,
                                                                    tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        http.headers["Accept-Encoding"] = "gzip"
        for path, media_type in [("/static/app.js", "text/javascript"), ("/static/style.css", "text/css"),
                                 ("/", "text/html"), ("/api/openapi.json", "application/json"),
                                 ("/static/favicon.svg", "image/svg+xml")]:
            answer = await http.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith(media_type), path
            if int(answer.headers.get("content-length", "1024")) >= 512:
                assert answer.headers.get("content-encoding") == "gzip", path
                assert "Accept-Encoding" in answer.headers.get("vary", ""), path
        name = f"gz_{secrets.token_hex(4)}"
        credentials = {"username": name, "password": "long enough pw"}
        created = await http.post("/api/v1/auth/register", json=credentials)
        assert created.status_code == 201
        tokens = await http.post("/api/v1/auth/login", json=credentials)
    assert tokens.status_code == 200
    assert len(tokens.content) >= 512  # large enough that gzip would have applied
    assert "content-encoding" not in tokens.headers  # BREACH: secrets are never compressed


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    return subprocess.run([curl, "--silent", "--show-error", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=20, check=False)


def test_tls_listener_speaks_http2(proxy: Nginx, test_ca: ThrowawayCA) -> None:
    done = _curl("--http2", "--cacert", str(test_ca.ca_file), "--resolve",
                 f"{DOMAIN}:{proxy.https_port}:127.0.0.1", "--output", "/dev/null",
                 "--write-out", "%{http_version} %{http_code}", f"https://{DOMAIN}:{proxy.https_port}/healthz")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "2 200"


def test_listeners_answer_on_ipv6(proxy: Nginx, test_ca: ThrowawayCA) -> None:
    if not ipv6_loopback():
        pytest.skip("no ::1 on this machine")
    for scheme, port, expected in (("https", proxy.https_port, "200"), ("http", proxy.http_port, "301")):
        done = _curl("--cacert", str(test_ca.ca_file), "--connect-to", f"{DOMAIN}:{port}:[::1]:{port}",
                     "--output", "/dev/null", "--write-out", "%{remote_ip} %{http_code}",
                     f"{scheme}://{DOMAIN}:{port}/healthz")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"::1 {expected}"


async def test_reload_closes_old_workers_sockets_after_the_shutdown_timeout(
        proxy: Nginx, tls: ssl.SSLContext) -> None:
    """A reload (a renewed certificate) must not leave old workers holding WebSockets forever:
    after worker_shutdown_timeout they close them, and the client can reconnect at once."""
    async with public_client(proxy.https_port, tls) as http:
        account = await register(http)
    socket = await open_socket(proxy, account.access_token, tls)
    try:
        assert proxy.process is not None
        reloaded = time.monotonic()
        proxy.process.send_signal(signal.SIGHUP)
        # The hub pings every second: without the timeout the socket stays open (TimeoutError).
        await socket.closed(timeout=WORKER_SHUTDOWN_TIMEOUT + 15)
        assert time.monotonic() - reloaded >= WORKER_SHUTDOWN_TIMEOUT - 0.5
    finally:
        await socket.close()
    again = await open_socket(proxy, account.access_token, tls)
    await again.close()


async def _published(http: httpx.AsyncClient, hub: HubProcess, user_id: int, name: str) -> float:
    """Publish one event; the time the publish call answered."""
    answer = await http.post("/api/v1/publish", json={"user_ids": [user_id], "name": name},
                             headers={"Authorization": f"Bearer {hub.env['HUB_API_KEY']}"})
    assert answer.status_code == 202, answer.text
    return time.monotonic()


async def test_stream_events_cross_nginx_unbuffered_and_its_ticket_is_never_logged(
        proxy: Nginx, deploy_hub: HubProcess, tls: ssl.SSLContext) -> None:
    async with public_client(proxy.https_port, tls) as http:
        account = await register(http)
        value = await stream_ticket(http, account.access_token)
        async with open_stream(http, params={"ticket": value}) as stream:
            delays = []
            for n in range(20):
                sent = await _published(http, deploy_hub, account.id, f"deploy.n{n}")
                (message,) = await stream.events(1, timeout=5)
                delays.append(time.monotonic() - sent)
                assert message.event == f"deploy.n{n}"
        delays.sort()
        # small events, one at a time: any buffering on the way would hold them for seconds
        assert delays[len(delays) // 2] < 0.1, delays
    await asyncio.sleep(0.2)
    log = proxy.access_log.read_text()
    assert '"GET /api/v1/stream HTTP/1.1" 200' in log
    for text in (log, deploy_hub.log.read_text(errors="replace")):
        assert value not in text and "ticket=" not in text


@pytest.mark.parametrize("idle", [3 * WS_READ_TIMEOUT, pytest.param(90.0, marks=pytest.mark.slow)])
async def test_idle_stream_outlives_proxy_read_timeout(proxy: Nginx, deploy_hub: HubProcess,
                                                       tls: ssl.SSLContext, idle: float) -> None:
    async with public_client(proxy.https_port, tls) as http:
        account = await register(http)
        async with open_stream(http, account.access_token) as stream:
            # only the hub's ": ping" comments (every second) cross nginx while the stream idles
            await stream.silent(idle)
            assert stream.pings >= idle / 2
            await _published(http, deploy_hub, account.id, "deploy.after_idle")
            (message,) = await stream.events(1, timeout=5)
            assert message.event == "deploy.after_idle"
