// Presence and typing in the chat page (protocol §11): which other members of each chat are
// online, and who is typing. Signals are live only: the online sets are read over REST after
// every (re)connect and kept current by "presence" frames; a typist is shown for a few seconds
// after their last "typing" frame.

const TYPING_SHOWN_MS = 4_000;
const LOADED_CHATS = 100; // presence is read for at most this many chats of the list

export class ChatPresence {
  #client;
  #onChange;
  #online = new Map(); // chat id -> Set of online user ids (the user's own included)
  #typing = new Map(); // chat id -> Map(user id -> timer that forgets them)

  /** `onChange(chatId)` is called whenever what is shown for a chat changed. */
  constructor(client, onChange) {
    this.#client = client;
    this.#onChange = onChange;
    client.on("presence", (frame) => {
      const online = this.#online.get(frame.chat_id) ?? new Set();
      if (frame.online) online.add(frame.user_id);
      else online.delete(frame.user_id);
      this.#online.set(frame.chat_id, online);
      if (!frame.online) this.#stopTyping(frame.chat_id, frame.user_id, false);
      onChange(frame.chat_id);
    });
    client.on("typing", (frame) => {
      const typists = this.#typing.get(frame.chat_id) ?? new Map();
      clearTimeout(typists.get(frame.user_id));
      typists.set(frame.user_id, setTimeout(
        () => this.#stopTyping(frame.chat_id, frame.user_id, true), TYPING_SHOWN_MS));
      this.#typing.set(frame.chat_id, typists);
      onChange(frame.chat_id);
    });
  }

  /** Re-read who is online in these chats (after a connect, or when the list changed). */
  async load(chatIds) {
    await Promise.all(chatIds.slice(0, LOADED_CHATS).map(async (chatId) => {
      try {
        const answer = await this.#client.api("GET", `/api/v1/chats/${chatId}/presence`);
        this.#online.set(chatId, new Set(answer.online));
        this.#onChange(chatId);
      } catch {
        // a chat left meanwhile: nothing to show
      }
    }));
  }

  /** Whether another member of the chat is online. */
  othersOnline(chatId) {
    const me = this.#client.user?.id;
    return [...(this.#online.get(chatId) ?? [])].some((userId) => userId !== me);
  }

  /** The user ids typing in the chat now. */
  typists(chatId) {
    return [...(this.#typing.get(chatId)?.keys() ?? [])];
  }

  clear() {
    for (const typists of this.#typing.values()) for (const timer of typists.values()) clearTimeout(timer);
    this.#typing.clear();
    this.#online.clear();
  }

  #stopTyping(chatId, userId, notify) {
    const typists = this.#typing.get(chatId);
    if (!typists?.has(userId)) return;
    clearTimeout(typists.get(userId));
    typists.delete(userId);
    if (notify) this.#onChange(chatId);
  }
}

/** A presence dot: green with "online", grey with "offline" (for screen readers too). */
export function presenceDot(el, online, testid) {
  return el("span", { className: online ? "presence-dot online" : "presence-dot", testid,
    data: { online: online ? "true" : "false" }, attrs: { role: "img", "aria-label": online ? "online" : "offline" } });
}
