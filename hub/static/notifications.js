// The notifications panel: results of page parses (`parse.completed`) and exchange requests
// (`exchange.result`) as they arrive, and the two forms that ask for them (protocol §7–§8).

import { byTestId, describeError, el, formatTime, say } from "./dom.js";

const HISTORY = 200; // how many recent events to look through after a (re)load
const KEPT = 50; // notifications kept on the page

export class NotificationsPanel {
  #client;
  #root;
  #list;
  #error;
  #items = new Map(); // "parse:12" -> {kind, request_id, data, at}
  #unseen = 0;
  #onUnseen;

  /** `onUnseen(count)` is told how many results arrived while the panel was out of sight. */
  constructor(client, root, onUnseen) {
    this.#client = client;
    this.#root = root;
    this.#list = byTestId("notification-list", root);
    this.#error = byTestId("tool-error", root);
    this.#onUnseen = onUnseen;
    this.#wireParseForm();
    this.#wireExchangeForm();
    client.on("parse.completed", (event) => this.#result("parse", event.data, event.created_at, true));
    client.on("exchange.result", (event) => this.#result("exchange", event.data, event.created_at, true));
  }

  /** Forget everything shown (sign-out). */
  clear() {
    this.#items.clear();
    this.#list.replaceChildren();
    this.seen();
    say(this.#error, "");
  }

  /** The panel is in sight now: reset the unseen count. */
  seen() {
    this.#unseen = 0;
    this.#onUnseen(0);
  }

  /** Fill the panel from the recent history of the stream (after sign-in or a lost resume). */
  async loadRecent() {
    const after = Math.max(0, this.#client.lastEventId - HISTORY);
    const page = await this.#client.api("GET", "/api/v1/events", { query: { after, limit: HISTORY } });
    for (const event of page.items) {
      if (event.name === "parse.completed") this.#result("parse", event.data, event.created_at, false);
      if (event.name === "exchange.result") this.#result("exchange", event.data, event.created_at, false);
    }
  }

  #result(kind, data, at, live) {
    if (!data || data.request_id === undefined) return;
    const key = `${kind}:${data.request_id}`;
    const known = this.#items.get(key);
    this.#items.set(key, { kind, request_id: data.request_id, data: { ...known?.data, ...data }, at });
    this.#render(key);
    if (live && !this.#visible()) {
      this.#unseen += 1;
      this.#onUnseen(this.#unseen);
    }
  }

  #pending(kind, requestId, data) {
    const key = `${kind}:${requestId}`;
    if (this.#items.has(key)) return; // the result won the race
    this.#items.set(key, { kind, request_id: requestId, data: { ...data, status: "pending" },
      at: new Date().toISOString() });
    this.#render(key);
  }

  #render(key) {
    const item = this.#items.get(key);
    const node = item.kind === "parse" ? parseNode(item) : exchangeNode(item);
    this.#list.querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
    node.dataset.key = key;
    this.#list.prepend(node);
    while (this.#list.children.length > KEPT) {
      const last = this.#list.lastElementChild;
      this.#items.delete(last.dataset.key);
      last.remove();
    }
  }

  #visible() {
    return this.#root.checkVisibility?.() ?? this.#root.offsetParent !== null;
  }

  #wireParseForm() {
    const form = byTestId("parse-form", this.#root);
    const input = byTestId("parse-url", form);
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const url = input.value.trim();
      say(this.#error, "");
      try {
        const answer = await this.#client.api("POST", "/api/v1/parse", { body: { url } });
        this.#pending("parse", answer.request_id, { url });
        input.value = "";
      } catch (error) {
        say(this.#error, `Parse: ${describeError(error)}`);
      }
    });
  }

  #wireExchangeForm() {
    const form = byTestId("exchange-form", this.#root);
    const bills = byTestId("bills", form);
    const template = document.getElementById("bill-row");
    const addBill = () => {
      const row = template.content.firstElementChild.cloneNode(true);
      row.querySelector(".remove-bill").addEventListener("click", () => {
        if (bills.children.length > 1) row.remove();
      });
      bills.append(row);
      return row;
    };
    addBill();
    byTestId("add-bill", form).addEventListener("click", () => addBill().querySelector("input").focus());
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      say(this.#error, "");
      const body = {
        exchange_rate: Number(byTestId("exchange-rate", form).value),
        bills: Array.from(bills.children, (row) => ({
          denomination_id: Number(row.querySelector('[name="denomination_id"]').value),
          denomination: Number(row.querySelector('[name="denomination"]').value),
          count: Number(row.querySelector('[name="count"]').value),
        })),
      };
      try {
        const answer = await this.#client.api("POST", "/api/v1/exchange", { body });
        this.#pending("exchange", answer.request_id, {});
      } catch (error) {
        say(this.#error, `Exchange: ${describeError(error)}`);
      }
    });
  }
}

function shell(item, title, details) {
  const status = item.data.status ?? "pending";
  return el("li", { className: `notification ${status}`, testid: "notification",
    data: { kind: item.kind, requestId: item.request_id, status } }, [
    el("p", { className: "notification-title", testid: "notification-title", text: title }),
    ...details,
    el("time", { className: "time", text: formatTime(item.at), attrs: { datetime: item.at } }),
  ]);
}

function parseNode(item) {
  const { status, title, url, error } = item.data;
  const heading = status === "success" ? (title || "(a page without a title)")
    : status === "failure" ? "Could not fetch the page" : "Fetching the page…";
  return shell(item, heading, [
    url ? el("p", { className: "detail url", text: url }) : null,
    error ? el("p", { className: "detail error-text", text: error }) : null,
  ]);
}

function exchangeNode(item) {
  const { status, total_rub: total, breakdown, error } = item.data;
  const heading = status === "completed" ? `Exchange #${item.request_id}: ${total} RUB`
    : status === "failed" ? `Exchange #${item.request_id} failed` : `Exchange #${item.request_id}: working…`;
  const lines = (breakdown ?? []).map((part) =>
    el("li", { text: `bill ${part.denomination_id}: ${part.subtotal_rub} RUB` }));
  return shell(item, heading, [
    lines.length ? el("ul", { className: "detail breakdown" }, lines) : null,
    error ? el("p", { className: "detail error-text", text: error }) : null,
  ]);
}
