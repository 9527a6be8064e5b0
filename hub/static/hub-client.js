// Browser client of the notification hub (protocol §3–§4). One ES module, no build step:
//
//   import { HubClient } from "/static/hub-client.js";
//   const hub = new HubClient();                      // same origin: REST /api/v1, socket /ws
//   hub.on("state", ({ state }) => show(state));      // connecting|connected|reconnecting|offline|signed-out
//   hub.on("resync", () => reloadEverythingOverRest());
//   hub.on("chat.message", (event) => append(event.data));
//   await hub.signIn("alice", "correct horse battery");
//   const chats = await hub.api("GET", "/api/v1/chats");
//
// What it does for the page:
// - first-frame auth (the token never goes into the URL);
// - resume: the last event id and epoch are kept in sessionStorage; after a reconnect (or a reload
//   of the tab) the hub replays what was missed. When it cannot (`recovered: false`) the client
//   emits "resync" and the page re-reads its state over REST. Events are never emitted twice;
// - reconnects with exponential back-off and full jitter, at once on `online` and when the tab
//   becomes visible; a ping every 25 s notices a dead socket;
// - refreshes the access token before it expires (REST refresh, then the `refresh` frame);
// - close codes (hub/close_codes.py, mirrored by `CloseCode` below) are "reconnect" (1006, 1011,
//   1012, 4008, 4009, 4010, ...), "refresh" (4001: new token, then reconnect; terminal once a token
//   refresh has failed too) or "terminal" (1002, 1007, 1008, 1009: this client's own mistake
//   would repeat; 4003); terminal ends the session ("signed-out"). A code this version does not
//   know is terminal in 4500–4999 and reconnect otherwise;
// - where WebSockets are blocked (three handshakes in a row fail while REST answers), it reads
//   the same stream from `GET /api/v1/stream` (protocol §12) with the same guarantees, and tries
//   the WebSocket again every few minutes; `transport: "stream"` uses the stream from the start.
//   `EventStreamSocket` makes the stream look like a socket to the rest of the client: its
//   `error` event's code and an HTTP refusal become the close code they stand for.
// - signals (§11), live only and never replayed: "presence" `{chat_id, user_id, online}` and
//   "typing" `{chat_id, user_id}`; `typing(chatId)` tells a chat's other members the user types
//   (at most once per chat every 2 s). After each "welcome" the page re-reads presence over REST.

const ACCESS_LEAD_MAX_MS = 60_000; // refresh this long before expiry at most...
const ACCESS_LEAD_FRACTION = 0.2; // ...or this part of the token's life, whichever is less
const WELCOME_TIMEOUT_MS = 15_000;
const MAX_AUTH_FAILURES = 2; // 4001 closes in a row, each after a successful refresh
const FALLBACK_AFTER = 3; // failed WebSocket handshakes in a row before the stream is tried
const STREAM_PATH = "/api/v1/stream";
const STREAM_ALIVE_MS = 45_000; // a stream that sent nothing for this long answers no ping
const TYPING_EVERY_MS = 2_000; // the hub forwards one typing signal per user and chat per 2 s

// The protocol's close codes: the same names and numbers as hub/close_codes.py, and the same
// action for each (tests/test_close_codes.py compares them).
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY_VIOLATION: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  RESTARTING: 1012,
  CLIENT_TIMEOUT: 4000, // ours: no welcome or pong in time
  AUTH_FAILED: 4001,
  FORBIDDEN: 4003,
  RATE_LIMITED: 4008,
  SLOW_CONSUMER: 4009,
  HISTORY_GONE: 4010,
});
const TERMINAL_CLOSE_CODES = new Set([
  CloseCode.PROTOCOL_ERROR,
  CloseCode.INVALID_DATA,
  CloseCode.POLICY_VIOLATION,
  CloseCode.TOO_BIG,
  CloseCode.FORBIDDEN,
]);
const REFRESH_CLOSE_CODES = new Set([CloseCode.AUTH_FAILED]);
const KNOWN_CLOSE_CODES = new Set(Object.values(CloseCode));
const TERMINAL_RANGE = [4500, 4999]; // for codes this version does not know (a newer hub's)

/** "reconnect", "refresh" (a new token first) or "terminal" for a close code. */
export function closeKind(code) {
  if (TERMINAL_CLOSE_CODES.has(code)) return "terminal";
  if (REFRESH_CLOSE_CODES.has(code)) return "refresh";
  if (KNOWN_CLOSE_CODES.has(code)) return "reconnect";
  return code >= TERMINAL_RANGE[0] && code <= TERMINAL_RANGE[1] ? "terminal" : "reconnect";
}

// How the event stream's end (its `error` event's code, or the HTTP status refusing it) maps
// onto the close codes above, so that the client does what it does on /ws.
const STREAM_END_CODES = Object.freeze({
  token_expired: CloseCode.AUTH_FAILED,
  session_revoked: CloseCode.AUTH_FAILED,
  slow_consumer: CloseCode.SLOW_CONSUMER,
  history_gone: CloseCode.HISTORY_GONE,
  server_restarting: CloseCode.RESTARTING,
  internal: CloseCode.INTERNAL,
});
const STREAM_STATUS_CODES = Object.freeze({ 401: CloseCode.AUTH_FAILED, 429: CloseCode.RATE_LIMITED });

/**
 * `GET /api/v1/stream` (fetch with a bearer header: no ticket needed) behind the few WebSocket
 * members the client uses: the `auth` frame opens it with the resume point, `onmessage` gets the
 * welcome, each event and each signal (an SSE message without an id) as its /ws frame, `onclose`
 * the close code the stream's end stands for.
 * A `refresh` frame has nowhere to go: the stream ends with `token_expired`, the client refreshes
 * and resumes. A `ping` is answered while the stream has sent something (its `: ping` comments
 * come every WS_PING_INTERVAL) within STREAM_ALIVE_MS.
 */
export class EventStreamSocket {
  readyState = 0;
  onopen = null;
  onmessage = null;
  onclose = null;
  onerror = null;
  #url;
  #abort = new AbortController();
  #lastSeen = 0;

  constructor(url) {
    this.#url = url;
    setTimeout(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen?.();
    }, 0);
  }

  send(text) {
    const frame = JSON.parse(text);
    if (frame.type === "auth") this.#open(frame);
    else if (frame.type === "ping" && Date.now() - this.#lastSeen < STREAM_ALIVE_MS) {
      setTimeout(() => this.#deliver('{"type":"pong"}'), 0);
    }
  }

  close() {
    this.#end(null, "");
  }

  async #open(frame) {
    const url = new URL(this.#url);
    if (frame.epoch !== undefined && frame.epoch !== null) {
      url.searchParams.set("last_event_id", String(frame.last_event_id));
      url.searchParams.set("epoch", frame.epoch);
    }
    let response;
    try {
      response = await fetch(url, {
        headers: { Authorization: `Bearer ${frame.token}`, Accept: "text/event-stream" },
        credentials: "omit", cache: "no-store", signal: this.#abort.signal,
      });
    } catch {
      this.#end(CloseCode.ABNORMAL, "the stream could not be opened");
      return;
    }
    if (response.status !== 200 || !response.body) {
      this.#end(STREAM_STATUS_CODES[response.status] ?? CloseCode.INTERNAL, `HTTP ${response.status}`);
      return;
    }
    try {
      await this.#read(response.body.pipeThrough(new TextDecoderStream()).getReader());
    } catch {
      // the connection broke: an abnormal end, as a socket's 1006
    }
    this.#end(CloseCode.ABNORMAL, "the stream ended");
  }

  async #read(reader) {
    let buffer = "";
    let fields = {};
    while (this.readyState === 1) {
      const { value, done } = await reader.read();
      if (done) return;
      this.#lastSeen = Date.now();
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (fields.data !== undefined) this.#message(fields.event ?? "message", fields.data, fields.id !== undefined);
          fields = {};
        } else if (!line.startsWith(":")) { // ": ping" comments only keep proxies from cutting it
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          fields[name] = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        }
      }
    }
  }

  #message(event, data, numbered) {
    if (event === "welcome" || (!numbered && event !== "error")) {
      this.#deliver(data); // the welcome, or a signal (presence, typing: no id), as /ws sends it
    } else if (event === "error") {
      let end = {};
      try {
        end = JSON.parse(data);
      } catch {
        end = {};
      }
      this.#end(STREAM_END_CODES[end.code] ?? CloseCode.INTERNAL, end.detail ?? "");
    } else {
      this.#deliver('{"type":"event",' + data.slice(1));
    }
  }

  #deliver(raw) {
    if (this.readyState === 1) this.onmessage?.({ data: raw });
  }

  #end(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.#abort.abort();
    if (code !== null) this.onclose?.({ code, reason });
  }
}

/** An answer of the hub's REST API that was not a success: `status`, `code`, `detail`. */
export class HubError extends Error {
  constructor(status, code, detail) {
    super(detail || code);
    this.name = "HubError";
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** A minimal event emitter: `on` returns a function that removes the listener. */
export class Emitter {
  #listeners = new Map();

  on(name, listener) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    this.#listeners.get(name).add(listener);
    return () => this.off(name, listener);
  }

  once(name, listener) {
    const off = this.on(name, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }

  off(name, listener) {
    this.#listeners.get(name)?.delete(listener);
  }

  emit(name, payload) {
    for (const listener of [...(this.#listeners.get(name) ?? [])]) {
      try {
        listener(payload);
      } catch (error) {
        console.error(`hub-client: a "${name}" listener failed`, error);
      }
    }
  }
}

class MemoryStorage {
  #items = new Map();
  getItem(key) { return this.#items.has(key) ? this.#items.get(key) : null; }
  setItem(key, value) { this.#items.set(key, String(value)); }
  removeItem(key) { this.#items.delete(key); }
}

function defaultStorage() {
  try {
    const probe = "hub-client:probe";
    window.sessionStorage.setItem(probe, "1");
    window.sessionStorage.removeItem(probe);
    return window.sessionStorage;
  } catch {
    return new MemoryStorage(); // storage disabled: the session lasts as long as the page
  }
}

export class HubClient extends Emitter {
  #base;
  #wsUrl;
  #storage;
  #key;
  #backoffBase;
  #backoffCap;
  #pingInterval;
  #pongTimeout;
  #session = null; // {access_token, refresh_token, expires_at, ttl, user}
  #state = "signed-out";
  #ws = null;
  #welcomed = false;
  #everConnected = false;
  #attempt = 0;
  #authFailures = 0;
  #retryTimer = null;
  #welcomeTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #refreshTimer = null;
  #refreshing = null;
  #lastEventId = 0;
  #epoch = null;
  #listening = false;
  #transportOption;
  #useStream = false;
  #wsFailures = 0;
  #wsRetry;
  #wsProbeTimer = null;
  #typingSent = new Map(); // chat id -> when the last typing frame went out

  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] the hub's origin (default: this page's)
   * @param {Storage} [options.storage] where the session and resume point live (sessionStorage)
   * @param {string} [options.storageKey] prefix of the storage keys ("hub")
   * @param {number} [options.backoffBaseMs] first reconnect delay's upper bound (500)
   * @param {number} [options.backoffCapMs] largest reconnect delay (15000)
   * @param {number} [options.pingIntervalMs] how often to check the socket is alive (25000)
   * @param {number} [options.pongTimeoutMs] how long a pong may take (10000)
   * @param {string} [options.transport] "auto" (WebSocket, falling back to the event stream where
   *   WebSockets are blocked), "websocket" or "stream" ("auto")
   * @param {number} [options.webSocketRetryMs] while on the stream, how often to try the WebSocket
   *   again (300000)
   */
  constructor(options = {}) {
    super();
    this.#base = (options.baseUrl ?? window.location.origin).replace(/\/+$/, "");
    this.#wsUrl = this.#base.replace(/^http/, "ws") + "/ws";
    this.#storage = options.storage ?? defaultStorage();
    this.#key = options.storageKey ?? "hub";
    this.#backoffBase = options.backoffBaseMs ?? 500;
    this.#backoffCap = options.backoffCapMs ?? 15_000;
    this.#pingInterval = options.pingIntervalMs ?? 25_000;
    this.#pongTimeout = options.pongTimeoutMs ?? 10_000;
    this.#transportOption = options.transport ?? "auto";
    if (!["auto", "websocket", "stream"].includes(this.#transportOption)) {
      throw new Error(`hub-client: transport must be "auto", "websocket" or "stream"`);
    }
    this.#useStream = this.#transportOption === "stream";
    this.#wsRetry = options.webSocketRetryMs ?? 300_000;
  }

  /** "websocket" or "stream": what the client connects with now. */
  get transport() { return this.#useStream ? "stream" : "websocket"; }

  /** connecting | connected | reconnecting | offline | signed-out */
  get state() { return this.#state; }

  /** `{id, username}` of the signed-in user, or null. */
  get user() { return this.#session?.user ?? null; }

  /** The newest event id this client has seen (0 before any) and the stream's epoch. */
  get lastEventId() { return this.#lastEventId; }
  get epoch() { return this.#epoch; }

  // ---- session -------------------------------------------------------------------------------

  /** Create an account (does not sign in). Resolves to `{id, username}`. */
  async register(username, password) {
    return this.#request("POST", "/api/v1/auth/register", { body: { username, password } });
  }

  /** Sign in, remember the session in storage, and connect. Resolves to `{id, username}`. */
  async signIn(username, password) {
    const tokens = await this.#request("POST", "/api/v1/auth/login", { body: { username, password } });
    const me = await this.#request("GET", "/api/v1/auth/me", { token: tokens.access_token });
    this.stop();
    this.#session = { user: { id: me.id, username: me.username } };
    this.#keepTokens(tokens);
    this.#loadResumePoint();
    this.start();
    return this.user;
  }

  /** Pick up a session kept in storage (a reloaded tab) and connect. Resolves to the user or null. */
  async restore() {
    let saved = null;
    try {
      saved = JSON.parse(this.#storage.getItem(`${this.#key}:session`) ?? "null");
    } catch {
      saved = null;
    }
    if (!saved?.refresh_token || !saved?.user) return null;
    this.#session = saved;
    this.#loadResumePoint();
    try {
      if (this.#expiresWithin(5_000)) await this.refreshTokens();
    } catch (error) {
      if (error instanceof HubError && error.status === 401) return null; // session ended
    }
    this.start();
    return this.user;
  }

  /** Forget the session (tokens and resume point) and close the socket. */
  signOut() {
    this.#endSession("signed-out");
  }

  // ---- REST ----------------------------------------------------------------------------------

  /**
   * An authorized REST call. `body` is sent as JSON, `query` as URL parameters; resolves to the
   * parsed answer (null for 204) or rejects with a HubError. A 401 gets one refresh and a retry.
   */
  async api(method, path, { body, query, headers } = {}) {
    if (this.#expiresWithin(5_000)) await this.refreshTokens();
    try {
      return await this.#request(method, path, { body, query, headers, token: this.#accessToken() });
    } catch (error) {
      if (!(error instanceof HubError) || error.status !== 401 || !this.#session) throw error;
      await this.refreshTokens();
      return this.#request(method, path, { body, query, headers, token: this.#accessToken() });
    }
  }

  #accessToken() {
    if (!this.#session) throw new HubError(401, "unauthorized", "not signed in");
    return this.#session.access_token;
  }

  /**
   * Trade the refresh token for a new pair (one at a time: a refresh token works once), then hand
   * the new access token to the open socket. A 401 ends the session ("signed-out").
   */
  refreshTokens() {
    if (!this.#refreshing) {
      this.#refreshing = this.#refresh().finally(() => { this.#refreshing = null; });
    }
    return this.#refreshing;
  }

  async #refresh() {
    const session = this.#session;
    if (!session) throw new HubError(401, "unauthorized", "not signed in");
    let tokens;
    try {
      tokens = await this.#request("POST", "/api/v1/auth/refresh", {
        body: { refresh_token: session.refresh_token },
      });
    } catch (error) {
      if (error instanceof HubError && error.status === 401 && this.#session === session) {
        this.#endSession("expired");
      } else if (this.#session === session) {
        this.#scheduleRefresh(5_000); // the hub is unreachable: try again soon
      }
      throw error;
    }
    if (this.#session !== session) return;
    this.#keepTokens(tokens);
    if (this.#ws && this.#welcomed) this.#send({ type: "refresh", token: tokens.access_token });
  }

  async #request(method, path, { body, query, headers, token } = {}) {
    const url = new URL(this.#base + path);
    for (const [name, value] of Object.entries(query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "omit" };
    if (token) init.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new HubError(0, "network", `the hub could not be reached (${error.message})`);
    }
    if (response.status === 204) return null;
    let answer = null;
    try {
      answer = await response.json();
    } catch {
      answer = null;
    }
    if (!response.ok) {
      throw new HubError(response.status, answer?.error ?? "http_" + response.status,
        answer?.detail ?? response.statusText);
    }
    return answer;
  }

  #keepTokens(tokens) {
    const ttl = Math.max(1, Number(tokens.expires_in) || 900) * 1000;
    Object.assign(this.#session, {
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      expires_at: Date.now() + ttl,
      ttl,
    });
    this.#save(`${this.#key}:session`, this.#session);
    this.#scheduleRefresh();
  }

  #expiresWithin(ms) {
    return !this.#session?.expires_at || this.#session.expires_at - Date.now() < ms;
  }

  #scheduleRefresh(delay) {
    clearTimeout(this.#refreshTimer);
    if (!this.#session) return;
    const lead = Math.min(ACCESS_LEAD_MAX_MS, this.#session.ttl * ACCESS_LEAD_FRACTION);
    const wait = delay ?? Math.max(0, this.#session.expires_at - lead - Date.now());
    this.#refreshTimer = setTimeout(() => { this.refreshTokens().catch(() => {}); }, wait);
  }

  #endSession(reason) {
    const wasActive = this.#session !== null;
    this.stop();
    if (this.#session?.user) this.#storage.removeItem(this.#resumeKey());
    this.#storage.removeItem(`${this.#key}:session`);
    this.#session = null;
    this.#lastEventId = 0;
    this.#epoch = null;
    this.#setState("signed-out");
    if (wasActive) this.emit("signed-out", { reason });
  }

  // ---- socket --------------------------------------------------------------------------------

  /** Connect (and keep reconnecting) while signed in. Called by signIn/restore. */
  start() {
    if (!this.#session) throw new Error("hub-client: sign in before start()");
    this.#listen(true);
    this.#connect();
  }

  /** Close the socket and stop reconnecting; the session stays (start() resumes). */
  stop() {
    this.#listen(false);
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    clearTimeout(this.#wsProbeTimer);
    this.#closeSocket(CloseCode.NORMAL, "client stopped");
    if (this.#state !== "signed-out") this.#setState("offline");
    this.#everConnected = false;
  }

  #connect() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    if (this.#ws || !this.#session) return;
    if (navigator.onLine === false) {
      this.#setState("offline");
      this.#retryLater(this.#backoffCap); // in case the `online` event never comes
      return;
    }
    this.#setState(this.#everConnected ? "reconnecting" : "connecting");
    if (this.#expiresWithin(5_000)) {
      this.refreshTokens().then(() => this.#connect(), () => this.#retryLater());
      return;
    }
    let ws;
    try {
      ws = this.#useStream ? new EventStreamSocket(this.#base + STREAM_PATH) : new WebSocket(this.#wsUrl);
    } catch (error) {
      console.error("hub-client: cannot open the socket", error);
      this.#retryLater();
      return;
    }
    this.#ws = ws;
    this.#welcomed = false;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const frame = { type: "auth", token: this.#session.access_token };
      if (this.#epoch !== null) Object.assign(frame, { last_event_id: this.#lastEventId, epoch: this.#epoch });
      ws.send(JSON.stringify(frame));
    };
    ws.onmessage = (message) => this.#onFrame(ws, message.data);
    ws.onclose = (event) => this.#onClose(ws, event.code, event.reason, opened);
    ws.onerror = () => {}; // a close event follows
    this.#welcomeTimer = setTimeout(() => this.#drop(ws, "no welcome in time"), WELCOME_TIMEOUT_MS);
  }

  #onFrame(ws, raw) {
    if (ws !== this.#ws) return;
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    this.#armPong(false);
    switch (frame?.type) {
      case "welcome": return this.#onWelcome(frame);
      case "event": return this.#onEvent(frame);
      case "refreshed": return this.emit("refreshed", frame);
      case "error": return this.emit("error", frame);
      case "presence": return this.emit("presence", frame);
      case "typing": return this.emit("typing", frame);
      default: return undefined; // pong, or a frame type this version does not know
    }
  }

  #onWelcome(frame) {
    clearTimeout(this.#welcomeTimer);
    const asked = this.#epoch !== null;
    const recovered = asked && frame.recovered === true && frame.epoch === this.#epoch;
    this.#welcomed = true;
    this.#everConnected = true;
    this.#attempt = 0;
    this.#authFailures = 0;
    if (!this.#useStream) this.#wsFailures = 0;
    this.#epoch = frame.epoch;
    if (!recovered) this.#lastEventId = frame.last_event_id; // replay continues after ours
    this.#saveResumePoint();
    clearInterval(this.#pingTimer);
    this.#pingTimer = setInterval(() => this.#ping(), this.#pingInterval);
    this.#setState("connected");
    this.emit("welcome", { ...frame, recovered });
    if (!recovered) this.emit("resync", { reason: asked ? "history lost" : "new connection" });
  }

  #onEvent(frame) {
    if (!Number.isInteger(frame.id) || frame.id <= this.#lastEventId) return; // seen already
    this.#lastEventId = frame.id;
    this.#saveResumePoint();
    const event = { id: frame.id, name: frame.name, data: frame.data, created_at: frame.created_at };
    this.emit("event", event);
    this.emit(frame.name, event);
  }

  #onClose(ws, code, reason, opened) {
    if (ws !== this.#ws) return;
    this.#forgetSocket();
    if (!this.#session) return;
    if (!opened && !this.#useStream && this.#transportOption === "auto") {
      this.#wsFailures += 1;
      if (this.#wsFailures >= FALLBACK_AFTER) {
        this.#fallBack();
        return;
      }
    }
    const kind = closeKind(code);
    if (kind === "terminal") {
      this.#endSession(reason || "closed by the hub");
      return;
    }
    if (kind === "refresh") {
      this.#authFailures += 1;
      if (this.#authFailures > MAX_AUTH_FAILURES) {
        this.#endSession(reason || "authentication failed");
        return;
      }
      this.#setState("reconnecting");
      // A failed refresh (401) ends the session inside refreshTokens: that is the terminal case.
      this.refreshTokens().then(() => this.#connect(), () => this.#retryLater());
      return;
    }
    if (code === CloseCode.SLOW_CONSUMER || code === CloseCode.HISTORY_GONE) this.#attempt = 0; // resume at once
    if (code === CloseCode.RATE_LIMITED) this.#attempt = Math.max(this.#attempt, 4);
    this.#retryLater();
  }

  /** WebSocket handshakes keep failing: when REST answers, the network blocks WebSockets, so
   * read the event stream instead (and try the WebSocket again later); else keep backing off. */
  async #fallBack() {
    let restWorks = false;
    try {
      restWorks = (await fetch(this.#base + "/healthz", { credentials: "omit", cache: "no-store" })).ok;
    } catch {
      restWorks = false;
    }
    if (!this.#session || this.#ws) return;
    if (!restWorks) {
      this.#retryLater();
      return;
    }
    this.#useStream = true;
    this.#attempt = 0;
    this.emit("transport", { transport: "stream" });
    this.#probeWebSocketLater();
    this.#connect();
  }

  /** While on the stream: now and then, see whether a WebSocket opens again; if so, switch back. */
  #probeWebSocketLater() {
    clearTimeout(this.#wsProbeTimer);
    this.#wsProbeTimer = setTimeout(() => {
      if (!this.#session || !this.#useStream || this.#transportOption !== "auto") return;
      let probe;
      try {
        probe = new WebSocket(this.#wsUrl);
      } catch {
        this.#probeWebSocketLater();
        return;
      }
      probe.onerror = () => {};
      probe.onclose = () => this.#probeWebSocketLater();
      probe.onopen = () => {
        probe.onclose = null;
        probe.close(CloseCode.NORMAL, "probe");
        if (!this.#session || !this.#useStream) return;
        this.#useStream = false;
        this.#wsFailures = 0;
        this.emit("transport", { transport: "websocket" });
        this.#closeSocket(CloseCode.NORMAL, "back to the WebSocket");
        this.#attempt = 0;
        this.#connect();
      };
    }, this.#wsRetry);
  }

  /** Full jitter: a random delay between 0 and min(cap, base × 2^attempt). */
  #retryLater(fixed) {
    clearTimeout(this.#retryTimer);
    if (!this.#session) return;
    if (navigator.onLine === false) this.#setState("offline");
    else if (this.#state !== "offline") this.#setState(this.#everConnected ? "reconnecting" : "connecting");
    const ceiling = Math.min(this.#backoffCap, this.#backoffBase * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    this.#retryTimer = setTimeout(() => this.#connect(), fixed ?? Math.random() * ceiling);
  }

  #ping() {
    if (!this.#ws || !this.#welcomed) return;
    this.#send({ type: "ping" });
    this.#armPong(true);
  }

  #armPong(waiting) {
    clearTimeout(this.#pongTimer);
    const ws = this.#ws;
    if (waiting && ws) this.#pongTimer = setTimeout(() => this.#drop(ws, "no pong in time"), this.#pongTimeout);
  }

  /** Give up on a socket that stopped answering: do not wait for its close handshake. */
  #drop(ws, reason) {
    if (ws !== this.#ws) return;
    this.#closeSocket(CloseCode.CLIENT_TIMEOUT, reason);
    this.#retryLater();
  }

  /** Tell the other members of `chatId` that the user is typing; sent at most once per chat
   * every 2 s (more would be dropped by the hub). True when a frame went out. */
  typing(chatId) {
    const now = Date.now();
    if (!this.#ws || !this.#welcomed || now - (this.#typingSent.get(chatId) ?? -Infinity) < TYPING_EVERY_MS) {
      return false;
    }
    this.#typingSent.set(chatId, now);
    if (this.#useStream) { // the HTTP stream reads only: the same signal over REST
      this.api("POST", `/api/v1/chats/${chatId}/typing`).catch(() => {});
    } else {
      this.#send({ type: "typing", chat_id: chatId });
    }
    return true;
  }

  #send(frame) {
    if (this.#ws?.readyState === 1) this.#ws.send(JSON.stringify(frame)); // WebSocket.OPEN
  }

  #closeSocket(code, reason) {
    const ws = this.#ws;
    this.#forgetSocket();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closed
    }
  }

  #forgetSocket() {
    clearTimeout(this.#welcomeTimer);
    clearTimeout(this.#pongTimer);
    clearInterval(this.#pingTimer);
    this.#ws = null;
    this.#welcomed = false;
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.emit("state", { state });
  }

  // ---- the browser's hints -------------------------------------------------------------------

  #onOnline = () => {
    this.#attempt = 0;
    if (!this.#ws) this.#connect();
  };

  #onOffline = () => {
    // The socket is most likely dead; close it now rather than wait for the ping to fail.
    this.#closeSocket(CloseCode.NORMAL, "offline");
    this.#setState("offline");
    this.#retryLater(this.#backoffCap);
  };

  #onVisibility = () => {
    if (document.visibilityState !== "visible" || !this.#session) return;
    if (this.#expiresWithin(Math.min(ACCESS_LEAD_MAX_MS, this.#session.ttl * ACCESS_LEAD_FRACTION))) {
      this.refreshTokens().catch(() => {}); // timers sleep in hidden tabs
    }
    if (!this.#ws) {
      this.#attempt = 0;
      this.#connect();
    } else if (this.#welcomed) {
      this.#ping(); // check at once that the socket survived the time in the background
    }
  };

  #listen(on) {
    if (on === this.#listening) return;
    this.#listening = on;
    const method = on ? "addEventListener" : "removeEventListener";
    window[method]("online", this.#onOnline);
    window[method]("offline", this.#onOffline);
    document[method]("visibilitychange", this.#onVisibility);
  }

  // ---- storage -------------------------------------------------------------------------------

  #resumeKey() {
    return `${this.#key}:resume:${this.#session.user.id}`;
  }

  #loadResumePoint() {
    this.#lastEventId = 0;
    this.#epoch = null;
    try {
      const saved = JSON.parse(this.#storage.getItem(this.#resumeKey()) ?? "null");
      if (typeof saved?.epoch === "string" && Number.isInteger(saved.last_event_id)) {
        this.#epoch = saved.epoch;
        this.#lastEventId = saved.last_event_id;
      }
    } catch {
      // a damaged entry: start afresh
    }
  }

  #saveResumePoint() {
    this.#save(this.#resumeKey(), { epoch: this.#epoch, last_event_id: this.#lastEventId });
  }

  #save(key, value) {
    try {
      this.#storage.setItem(key, JSON.stringify(value));
    } catch {
      // storage full or disabled: the page keeps working, a reload signs in again
    }
  }
}
