// The hub's service worker (protocol §13): shows a Web Push as a notification and opens the
// chat (or the page) on click. The push's payload is {"title", "body", "event"}, or
// {"close": <tag>} once the user has read that chat elsewhere: then the notifications tagged
// <tag> are closed and none is shown. A page that reads a chat posts {"close": <tag>} here too.

async function closeTagged(tag) {
  const shown = await self.registration.getNotifications({ tag });
  for (const notification of shown) notification.close();
}

self.addEventListener("push", (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch {
    payload = { title: "New notification", body: event.data ? event.data.text() : "" };
  }
  if (typeof payload.close === "string") {
    event.waitUntil(closeTagged(payload.close));
    return;
  }
  const hubEvent = payload.event || {};
  const chatId = hubEvent.name === "chat.message" && hubEvent.data ? hubEvent.data.chat_id : null;
  event.waitUntil(self.registration.showNotification(payload.title || "Notification", {
    body: payload.body || "",
    icon: "/static/favicon.svg",
    tag: chatId ? `chat-${chatId}` : `event-${hubEvent.name || "push"}`,
    data: { url: chatId ? `/?chat=${encodeURIComponent(chatId)}` : "/" },
  }));
});

self.addEventListener("message", (event) => {
  if (event.origin && event.origin !== self.location.origin) return;
  if (typeof event.data?.close === "string") event.waitUntil(closeTagged(event.data.close));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data?.url || "/", self.location.origin).href;
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const client of windows) {
      if (new URL(client.url).origin === self.location.origin && "focus" in client) {
        await client.focus();
        if ("navigate" in client) await client.navigate(url);
        return;
      }
    }
    await self.clients.openWindow(url);
  })());
});
