// The chat part of the page: the chat list (latest activity first, unread badges), starting a
// chat with someone found (user_search.js), and the open conversation (older messages on scroll,
// live messages, read markers, leaving it). State comes from REST (protocol §6) and is kept current by the hub's events (§5).

import { byTestId, describeError, el, formatTime, randomKey, say } from "./dom.js";
import { ChatPresence, presenceDot } from "./presence.js";
import { closeChatNotifications } from "./push.js";
import { UserSearch } from "./user_search.js";

const PAGE = 50;
const NEAR_EDGE_PX = 80;
const SEND_TRIES = 3;

export class ChatView {
  #client;
  #ui;
  #onOpen;
  #chats = new Map(); // id -> chat (§6) plus {preview, readBy}
  #order = []; // chat ids, latest activity first
  #open = null; // {id, messages: Map, nextBeforeId, loadingOlder, readSent}
  #loading = null; // the REST reload in flight, if any
  #dirty = new Set(); // chats whose unread count may have raced a reload
  #presence; // who is online and typing (§11)
  #search; // the user search that starts chats

  /** `onOpen(chatId | null)` tells the page which chat is open (the phone layout follows it). */
  constructor(client, onOpen) {
    this.#client = client;
    this.#onOpen = onOpen;
    this.#ui = {
      list: byTestId("chat-list"), empty: byTestId("chat-list-empty"),
      title: byTestId("chat-title"),
      members: byTestId("chat-members"), scroller: byTestId("messages"),
      messages: byTestId("message-list"), older: byTestId("loading-older"),
      receipt: byTestId("read-receipt"), composer: byTestId("composer"),
      input: byTestId("message-input"), send: byTestId("send"), sendError: byTestId("send-error"),
      leave: byTestId("leave-chat"), typing: byTestId("typing-indicator"),
      headerDot: byTestId("chat-presence"),
    };
    this.#presence = new ChatPresence(client, (chatId) => this.#presenceChanged(chatId));
    this.#search = new UserSearch(client, { input: byTestId("user-search"),
      form: byTestId("user-search-form"), results: byTestId("user-results") },
    (user) => this.#startChatWith(user));
    client.on("welcome", () => this.#presence.load(this.#order));
    this.#wire();
    client.on("chat.message", (event) => this.#onMessage(event.data));
    client.on("chat.created", (event) => this.#onChat(event.data, true));
    client.on("chat.member_added", (event) => this.#refreshChat(event.data.chat_id));
    client.on("chat.member_left", (event) => this.#refreshChat(event.data.chat_id));
    client.on("chat.read", (event) => this.#onRead(event.data));
  }

  get openChatId() { return this.#open?.id ?? null; }

  /** Re-read the chat list (and the open chat's newest messages) over REST. */
  async reload() {
    const run = (async () => {
      const answer = await this.#client.api("GET", "/api/v1/chats");
      const previews = new Map([...this.#chats].map(([id, chat]) => [id, chat]));
      this.#chats.clear();
      for (const chat of answer.items) {
        const old = previews.get(chat.id);
        this.#chats.set(chat.id, { ...chat, preview: old?.preview, readBy: old?.readBy ?? {} });
      }
      this.#order = answer.items.map((chat) => chat.id);
      this.#renderList();
      this.#presence.load(this.#order);
      if (this.#open && !this.#chats.has(this.#open.id)) this.close();
      else if (this.#open) await this.#loadMessages(null, true);
    })();
    this.#loading = run;
    try {
      await run;
    } finally {
      if (this.#loading === run) this.#loading = null;
    }
    // Messages that arrived while the list was being read may be counted twice: ask again.
    const dirty = [...this.#dirty];
    this.#dirty.clear();
    await Promise.all(dirty.map((id) => this.#refreshChat(id)));
  }

  /** Forget everything (sign-out). */
  clear() {
    this.close();
    this.#chats.clear();
    this.#order = [];
    this.#presence.clear();
    this.#renderList();
    this.#search.clear();
  }

  async open(chatId) {
    if (!this.#chats.has(chatId)) return;
    this.#open = { id: chatId, messages: new Map(), nextBeforeId: undefined, loadingOlder: false, readSent: 0 };
    this.#ui.messages.replaceChildren();
    say(this.#ui.sendError, "");
    this.#renderHeader();
    this.#renderList();
    this.#ui.input.disabled = this.#ui.send.disabled = false;
    this.#disarmLeave();
    this.#ui.leave.hidden = false;
    this.#onOpen(chatId);
    this.#ui.input.focus();
    try {
      await this.#loadMessages(null, false);
      this.#scrollToBottom();
      this.#markRead();
    } catch (error) {
      say(this.#ui.sendError, describeError(error));
    }
  }

  close() {
    this.#open = null;
    this.#ui.messages.replaceChildren();
    this.#ui.title.textContent = "No chat open";
    this.#ui.members.textContent = "";
    say(this.#ui.receipt, "");
    this.#renderPresence();
    this.#ui.input.disabled = this.#ui.send.disabled = true;
    this.#ui.leave.hidden = true;
    this.#renderList();
    this.#onOpen(null);
  }

  /** The conversation may have come into sight (tab shown, view changed): read what is new. */
  visible() {
    this.#markRead();
  }

  // ---- events --------------------------------------------------------------------------------

  #onMessage(message) {
    const chat = this.#chats.get(message.chat_id);
    if (!chat) {
      this.#refreshChat(message.chat_id);
      return;
    }
    chat.preview = message;
    this.#order = [chat.id, ...this.#order.filter((id) => id !== chat.id)];
    const mine = message.sender_id === this.#client.user?.id;
    const reading = this.#open?.id === chat.id && this.#inSight();
    if (this.#open?.id === chat.id) {
      const stick = mine || this.#nearBottom();
      this.#insert(message);
      if (stick) this.#scrollToBottom();
      this.#renderReceipt();
    }
    if (!mine && !reading) {
      chat.unread_count += 1;
      if (this.#loading) this.#dirty.add(chat.id);
    }
    this.#renderList();
    if (reading) this.#markRead();
  }

  #onChat(chat, fresh) {
    const known = this.#chats.get(chat.id);
    this.#chats.set(chat.id, { ...chat, preview: known?.preview, readBy: known?.readBy ?? {} });
    if (!this.#order.includes(chat.id)) this.#order = fresh ? [chat.id, ...this.#order] : [...this.#order, chat.id];
    this.#renderList();
    if (this.#open?.id === chat.id) this.#renderHeader();
    this.#presence.load([chat.id]); // new chat or members: who of them is online
  }

  async #refreshChat(chatId) {
    try {
      this.#onChat(await this.#client.api("GET", `/api/v1/chats/${chatId}`), true);
    } catch (error) {
      if (error.status === 404) this.#forget(chatId);
    }
  }

  #forget(chatId) {
    this.#chats.delete(chatId);
    this.#order = this.#order.filter((id) => id !== chatId);
    if (this.#open?.id === chatId) this.close();
    else this.#renderList();
  }

  #onRead({ chat_id: chatId, user_id: userId, message_id: messageId }) {
    const chat = this.#chats.get(chatId);
    if (!chat) return;
    chat.readBy[userId] = Math.max(chat.readBy[userId] ?? 0, messageId);
    if (this.#open?.id === chatId) this.#renderReceipt();
  }

  // ---- REST ----------------------------------------------------------------------------------

  async #loadMessages(beforeId, merge) {
    const open = this.#open;
    const page = await this.#client.api("GET", `/api/v1/chats/${open.id}/messages`, {
      query: { limit: PAGE, before_id: beforeId ?? undefined },
    });
    if (this.#open !== open) return;
    const overlaps = page.items.some((message) => open.messages.has(message.id));
    if (merge && !overlaps && page.next_before_id !== null) {
      // More was missed than one page holds: start the view afresh rather than leave a hole.
      open.messages.clear();
      this.#ui.messages.replaceChildren();
      merge = false;
    }
    if (!merge) open.nextBeforeId = page.next_before_id;
    for (const message of page.items) this.#insert(message);
    const newest = page.items[0];
    const chat = this.#chats.get(open.id);
    if (newest && chat && (!chat.preview || chat.preview.id < newest.id)) {
      chat.preview = newest;
      this.#renderList();
    }
    this.#renderReceipt();
  }

  async #loadOlder() {
    const open = this.#open;
    if (!open || open.loadingOlder || !open.nextBeforeId) return;
    open.loadingOlder = true;
    this.#ui.older.hidden = false;
    const scroller = this.#ui.scroller;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    try {
      await this.#loadMessages(open.nextBeforeId, false);
      scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
    } catch (error) {
      say(this.#ui.sendError, describeError(error));
    } finally {
      open.loadingOlder = false;
      this.#ui.older.hidden = true;
    }
  }

  #markRead() {
    const open = this.#open;
    if (!open || !this.#inSight() || open.messages.size === 0) return;
    const newest = Math.max(...open.messages.keys());
    const chat = this.#chats.get(open.id);
    if (chat && chat.unread_count !== 0) {
      chat.unread_count = 0;
      this.#renderList();
    }
    if (newest <= open.readSent) return;
    closeChatNotifications(open.id);
    open.readSent = newest;
    this.#client.api("POST", `/api/v1/chats/${open.id}/read`, { body: { message_id: newest } })
      .catch(() => { if (this.#open === open) open.readSent = 0; });
  }

  async #send(text) {
    const open = this.#open;
    const key = randomKey(); // the same key on every try: the hub posts the message once
    for (let attempt = 1; ; attempt += 1) {
      try {
        const message = await this.#client.api("POST", `/api/v1/chats/${open.id}/messages`, {
          body: { text }, headers: { "Idempotency-Key": key },
        });
        if (this.#open === open) this.#onMessage(message);
        return;
      } catch (error) {
        const transient = error.status === 0 || error.status >= 500;
        if (!transient || attempt >= SEND_TRIES) throw error;
        await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
      }
    }
  }

  /** The first click arms the button, the second leaves: a member cannot undo a leave alone. */
  async #leave() {
    const open = this.#open;
    const button = this.#ui.leave;
    if (!open) return;
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = "Click again to leave";
      return;
    }
    this.#disarmLeave();
    try {
      await this.#client.api("DELETE", `/api/v1/chats/${open.id}/members/me`);
      this.#forget(open.id);
    } catch (error) {
      if (error.status === 404) this.#forget(open.id); // already gone
      else say(this.#ui.sendError, describeError(error));
    }
  }

  #disarmLeave() {
    delete this.#ui.leave.dataset.armed;
    this.#ui.leave.textContent = "Leave chat";
  }

  async #startChatWith(user) {
    const me = this.#client.user;
    const existing = this.#order.map((id) => this.#chats.get(id)).find((chat) =>
      chat.members.length === 2 && chat.members.some((member) => member.user_id === user.id));
    this.#search.clear();
    if (existing) {
      await this.open(existing.id);
      return;
    }
    try {
      const chat = await this.#client.api("POST", "/api/v1/chats", {
        body: { title: `${me.username} & ${user.username}`, member_ids: [user.id] },
      });
      this.#onChat(chat, true);
      await this.open(chat.id);
    } catch (error) {
      say(this.#ui.sendError, describeError(error));
    }
  }

  // ---- rendering -----------------------------------------------------------------------------

  #renderList() {
    const items = this.#order.map((id) => this.#chats.get(id)).filter(Boolean).map((chat) => {
      const unread = chat.unread_count > 0;
      const preview = chat.preview
        ? `${chat.preview.sender_username}: ${chat.preview.text}`
        : chat.members.map((member) => member.username).join(", ");
      const button = el("button", {
        className: "chat-item", testid: "chat-item", data: { chatId: chat.id },
        attrs: { type: "button", "aria-current": this.#open?.id === chat.id ? "true" : false },
      }, [
        el("span", { className: "chat-name", testid: "chat-name" }, [
          presenceDot(el, this.#presence.othersOnline(chat.id), "presence-dot"), chat.title]),
        el("span", { className: "chat-when", text: chat.preview ? formatTime(chat.preview.created_at) : "" }),
        el("span", { className: "chat-preview", text: preview }),
        unread ? el("span", { className: "badge", testid: "unread-badge", text: chat.unread_count,
          attrs: { "aria-label": `${chat.unread_count} unread` } }) : null,
      ]);
      button.addEventListener("click", () => this.open(chat.id));
      return el("li", {}, [button]);
    });
    this.#ui.list.replaceChildren(...items);
    this.#ui.empty.hidden = items.length > 0;
  }

  #renderHeader() {
    const chat = this.#chats.get(this.#open.id);
    this.#ui.title.textContent = chat.title;
    this.#ui.members.textContent = chat.members.map((member) => member.username).join(", ");
    this.#renderPresence();
  }

  #presenceChanged(chatId) {
    if (!this.#chats.has(chatId)) return;
    this.#renderList();
    if (this.#open?.id === chatId) this.#renderPresence();
  }

  #renderPresence() {
    const chat = this.#open && this.#chats.get(this.#open.id);
    const online = Boolean(chat) && this.#presence.othersOnline(chat.id);
    const dot = presenceDot(el, online, "chat-presence");
    dot.hidden = !chat;
    this.#ui.headerDot.replaceWith(dot);
    this.#ui.headerDot = dot;
    const names = chat ? this.#presence.typists(chat.id)
      .map((id) => chat.members.find((member) => member.user_id === id)?.username).filter(Boolean) : [];
    say(this.#ui.typing, names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "");
  }

  #insert(message) {
    const open = this.#open;
    if (!open || message.chat_id !== open.id || open.messages.has(message.id)) return;
    open.messages.set(message.id, message);
    const mine = message.sender_id === this.#client.user?.id;
    const node = el("li", { className: mine ? "message mine" : "message", testid: "message",
      data: { messageId: message.id, senderId: message.sender_id } }, [
      el("span", { className: "sender", testid: "message-sender", text: message.sender_username }),
      el("time", { className: "time", text: formatTime(message.created_at), attrs: { datetime: message.created_at } }),
      el("p", { className: "text", testid: "message-text", text: message.text }),
    ]);
    let after = this.#ui.messages.lastElementChild;
    while (after && Number(after.dataset.messageId) > message.id) after = after.previousElementSibling;
    if (after) after.after(node);
    else this.#ui.messages.prepend(node);
  }

  #renderReceipt() {
    const open = this.#open;
    const chat = open && this.#chats.get(open.id);
    const me = this.#client.user?.id;
    const mineIds = open ? [...open.messages.values()].filter((m) => m.sender_id === me).map((m) => m.id) : [];
    if (!chat || mineIds.length === 0) {
      say(this.#ui.receipt, "");
      return;
    }
    const newestMine = Math.max(...mineIds);
    const readers = chat.members.filter((member) =>
      member.user_id !== me && (chat.readBy[member.user_id] ?? 0) >= newestMine);
    say(this.#ui.receipt, readers.length ? `Seen by ${readers.map((m) => m.username).join(", ")}` : "");
  }

  /** The open conversation is on screen (the tab is visible and no other view covers it). */
  #inSight() {
    const scroller = this.#ui.scroller;
    return document.visibilityState === "visible"
      && (scroller.checkVisibility?.() ?? scroller.offsetParent !== null);
  }

  #nearBottom() {
    const s = this.#ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_EDGE_PX;
  }

  #scrollToBottom() {
    this.#ui.scroller.scrollTop = this.#ui.scroller.scrollHeight;
  }

  // ---- input ---------------------------------------------------------------------------------

  #wire() {
    const ui = this.#ui;
    ui.leave.addEventListener("click", () => this.#leave());
    ui.leave.addEventListener("blur", () => this.#disarmLeave());
    ui.scroller.addEventListener("scroll", () => {
      if (ui.scroller.scrollTop < NEAR_EDGE_PX) this.#loadOlder();
      if (this.#nearBottom()) this.#markRead();
    });
    ui.input.addEventListener("keydown", (key) => {
      if (key.key === "Enter" && !key.shiftKey && !key.isComposing) {
        key.preventDefault();
        ui.composer.requestSubmit();
      }
    });
    ui.input.addEventListener("input", () => {
      if (this.#open && ui.input.value.trim()) this.#client.typing(this.#open.id);
      ui.input.style.height = "auto"; // CSSOM, not an inline attribute: allowed by the policy
      ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
    });
    ui.composer.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const text = ui.input.value.trim();
      if (!text || !this.#open) return;
      ui.input.value = "";
      ui.input.style.height = "auto";
      say(ui.sendError, "");
      try {
        await this.#send(text);
      } catch (error) {
        if (!ui.input.value) ui.input.value = text; // give the text back to retry
        say(ui.sendError, describeError(error));
      }
    });
  }
}
