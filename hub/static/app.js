// The chat page: signs in, shows the connection's state, and wires the chat and notifications
// views to one HubClient. Layout follows `body[data-view]` (list | chat | notifications) on
// narrow screens; wide screens show all three columns.

import { ChatView } from "./chat.js";
import { byTestId, describeError, say } from "./dom.js";
import { HubClient, HubError } from "./hub-client.js";
import { NotificationsPanel } from "./notifications.js";
import { PushButton, requestedChat } from "./push.js";

const STATE_TEXT = {
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  offline: "offline",
  "signed-out": "offline",
};

const client = new HubClient();
const body = document.body;
const status = byTestId("connection-status");
const notificationCount = byTestId("notification-count");
const toggleNotifications = byTestId("toggle-notifications");

let view = "list";
function setView(next) {
  view = next;
  body.dataset.view = next;
  toggleNotifications.setAttribute("aria-expanded", String(next === "notifications"));
  if (next === "notifications") notifications.seen();
  if (next === "chat") chats.visible();
}

const chats = new ChatView(client, (chatId) => {
  if (chatId !== null) setView("chat");
  else if (view === "chat") setView("list");
});
const push = new PushButton(client, byTestId("enable-push"));
const notifications = new NotificationsPanel(client, byTestId("notifications"), (count) => {
  notificationCount.textContent = String(count);
  notificationCount.hidden = count === 0;
});

// ---- connection ------------------------------------------------------------------------------

client.on("state", ({ state }) => {
  status.dataset.state = state;
  status.dataset.transport = client.transport;
  status.querySelector(".status-text").textContent = STATE_TEXT[state] ?? state;
});
client.on("welcome", (welcome) => {
  status.dataset.recovered = String(welcome.recovered); // a resume that lost nothing, or a reload
  status.dataset.transport = client.transport; // websocket, or the stream where WebSockets fail
});
client.on("resync", () => reloadAll());
client.on("signed-out", ({ reason }) => {
  showSignedOut(reason === "signed-out" ? "" : "Your session ended; please sign in again.");
});

async function reloadAll() {
  try {
    await Promise.all([chats.reload(), notifications.loadRecent()]);
  } catch (error) {
    if (!(error instanceof HubError && error.status === 401)) console.error("reload failed", error);
  }
}

// ---- session ---------------------------------------------------------------------------------

const authForm = byTestId("auth-form");
const authError = byTestId("auth-error");

function showSignedIn(user) {
  body.dataset.signedIn = "true";
  byTestId("me").textContent = user.username;
  setView("list");
  // The socket's first welcome asks for a full reload too ("resync") unless it resumed a stream
  // this tab already followed; the chat list is wanted at once either way.
  const wanted = requestedChat(); // a push notification's click opened /?chat=<id>
  chats.reload().then(() => (wanted !== null ? chats.open(wanted) : undefined))
    .catch((error) => console.error("loading chats failed", error));
  push.offer().catch((error) => console.error("web push unavailable", error));
  if (client.lastEventId > 0) notifications.loadRecent().catch(() => {});
}

function showSignedOut(message) {
  body.dataset.signedIn = "false";
  chats.clear();
  notifications.clear();
  say(authError, message);
  byTestId("auth-username").focus();
}

authForm.addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const action = submit.submitter?.value ?? "sign-in";
  const username = byTestId("auth-username").value.trim();
  const password = byTestId("auth-password").value;
  say(authError, "");
  for (const button of authForm.querySelectorAll("button")) button.disabled = true;
  try {
    if (action === "register") await client.register(username, password);
    const user = await client.signIn(username, password);
    byTestId("auth-password").value = "";
    showSignedIn(user);
  } catch (error) {
    const wrong = error instanceof HubError && error.status === 401;
    const taken = error instanceof HubError && error.status === 409;
    say(authError, wrong ? "Wrong username or password." : taken ? "That username is taken." : describeError(error));
  } finally {
    for (const button of authForm.querySelectorAll("button")) button.disabled = false;
  }
});

byTestId("sign-out").addEventListener("click", () => client.signOut());

// ---- layout and keyboard ---------------------------------------------------------------------

byTestId("back").addEventListener("click", () => chats.close());
toggleNotifications.addEventListener("click", () => {
  setView(view === "notifications" ? (chats.openChatId !== null ? "chat" : "list") : "notifications");
  if (view === "notifications") byTestId("parse-url").focus();
});
byTestId("close-notifications").addEventListener("click", () => {
  setView(chats.openChatId !== null ? "chat" : "list");
  toggleNotifications.focus();
});
document.addEventListener("keydown", (key) => {
  if (key.key === "Escape" && view === "notifications") {
    setView(chats.openChatId !== null ? "chat" : "list");
    toggleNotifications.focus();
  }
});
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") chats.visible();
});

// ---- start -----------------------------------------------------------------------------------

for (const button of authForm.querySelectorAll("button")) button.disabled = false;
client.restore().then((user) => {
  if (user) showSignedIn(user);
  else showSignedOut("");
}, () => showSignedOut(""));
