"""The chat page where WebSockets are blocked: served through a proxy that refuses every upgrade
(as some corporate proxies do), it falls back to the event stream by itself (protocol §12),
chats live both ways, shows the other's presence and typing, and survives a hub restart
without losing or repeating a message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from playwright.async_api import expect

from hub.settings import Settings
from tests.browser.chat_page import ChatPage
from tests.browser.conftest import Pages
from tests.conftest import free_port, register, serve_hub, unique_name
from tests.wsutil import publish_to

HEAD_LIMIT = 64 * 1024
# what Chromium logs for a connection the proxy closes without an answer: a refused upgrade, or
# any request while the hub restarts behind it
DROPPED = "ERR_EMPTY_RESPONSE"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class Refusal:
    """Whether the proxy refuses upgrades now (a test may lift the block)."""

    def __init__(self) -> None:
        self.on = True


@contextlib.asynccontextmanager
async def upgrade_refusing_proxy(upstream_port: int, refusal: Refusal | None = None) -> AsyncIterator[int]:
    """A TCP proxy to 127.0.0.1:`upstream_port` that drops any connection whose first request asks
    for a WebSocket upgrade (a browser opens each WebSocket on a connection of its own)."""
    tasks: set[asyncio.Task[None]] = set()
    refusal = refusal or Refusal()

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            try:
                head = await asyncio.wait_for(client_reader.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            if refusal.on and b"\nupgrade: websocket" in head.lower():
                return  # the handshake fails, as behind a proxy that strips upgrades
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            except OSError:
                return
            upstream_writer.write(head)
            await asyncio.gather(_pipe(client_reader, upstream_writer),
                                 _pipe(upstream_reader, client_writer))
        finally:  # cancelled at the end of the test too: every socket closed
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()

    def spawn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(spawn, "127.0.0.1", 0, limit=HEAD_LIMIT)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_the_chat_page_falls_back_to_the_stream_and_chats_live_through_a_restart(
        settings: Settings, pages: Pages) -> None:
    port = free_port()
    alice_name, bob_name = unique_name("alice"), unique_name("bob")
    async with upgrade_refusing_proxy(port) as proxy_port:
        async with serve_hub(settings, port) as first:
            bob = ChatPage(await pages.open(), first.base_url)  # WebSockets work for Bob
            await bob.register(bob_name)
            alice = ChatPage(await pages.open(), f"http://127.0.0.1:{proxy_port}")
            pages.log(alice.page).allow(DROPPED)
            await alice.register(alice_name)  # connected: through the stream, after 3 failed sockets
            await expect(alice.status).to_have_attribute("data-transport", "stream")
            await expect(bob.status).to_have_attribute("data-transport", "websocket")

            await alice.start_chat_with(bob_name)
            title = f"{alice_name} & {bob_name}"
            await expect(bob.chat_item(title)).to_have_count(1)
            await alice.send("over the stream")
            await bob.open_chat(title)
            await expect(bob.message("over the stream")).to_have_count(1)
            await bob.send("over the socket")
            await expect(alice.message("over the socket")).to_have_count(1)
            # signals (§11) reach the stream too: Bob's dot and his typing, at Alice's
            await expect(alice.chat_item(title).get_by_test_id("presence-dot")).to_have_attribute(
                "data-online", "true")
            await bob.by("message-input").press_sequentially("typing", delay=50)
            await expect(alice.by("typing-indicator")).to_have_text(f"{bob_name} is typing…")

        async with serve_hub(settings, port) as second:  # server_restarting, then a resume
            await alice.connected()
            await bob.connected()
            for number in range(1, 4):
                await bob.send(f"after the restart {number}")
            for number in range(1, 4):
                await expect(alice.message(f"after the restart {number}")).to_have_count(1)
            await alice.send("still on the stream")
            await expect(bob.message("still on the stream")).to_have_count(1)
            await expect(alice.status).to_have_attribute("data-transport", "stream")
            await expect(alice.messages).to_have_count(6)
            texts = await alice.by("message-text").all_text_contents()
            assert len(texts) == len(set(texts)) == 6
            assert second.base_url.endswith(f":{port}")


CLIENT = """async ([username, password]) => {
  const { HubClient } = await import("/static/hub-client.js");
  window.got = [];
  window.transports = [];
  window.hub = new HubClient({ storageKey: "probe", webSocketRetryMs: 1000, backoffBaseMs: 50,
                               backoffCapMs: 200 });
  window.hub.on("event", (event) => window.got.push(event.id));
  window.hub.on("transport", ({ transport }) => window.transports.push(transport));
  await window.hub.signIn(username, password);
}"""


async def _until(page: object, condition: str, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while not await page.evaluate(condition):  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)


async def test_the_client_goes_back_to_the_websocket_once_it_opens_again(settings: Settings,
                                                                        pages: Pages) -> None:
    port = free_port()
    refusal = Refusal()
    async with upgrade_refusing_proxy(port, refusal) as proxy_port, serve_hub(settings, port) as hub:
        account = await register(hub.http)
        page = await pages.open()
        pages.log(page).allow(DROPPED)
        await page.goto(f"http://127.0.0.1:{proxy_port}/")
        await page.evaluate(CLIENT, [account.username, account.password])
        await _until(page, "() => hub.transport === 'stream' && hub.state === 'connected'")
        first = await publish_to(hub, [account.id], "on.stream")
        await _until(page, f"() => got.includes({first[str(account.id)]})")
        refusal.on = False  # the network lets WebSockets through again
        await _until(page, "() => hub.transport === 'websocket' && hub.state === 'connected'")
        second = await publish_to(hub, [account.id], "on.socket")
        await _until(page, f"() => got.includes({second[str(account.id)]})")
        assert await page.evaluate("() => transports") == ["stream", "websocket"]
        got = await page.evaluate("() => got")
        assert got == sorted(set(got)) and got[-1] == second[str(account.id)]
