// Finding someone to talk to in the chat page: the search box above the chat list, its results
// as you type (GET /api/v1/users), and the keyboard around them (Enter picks the first match,
// the arrows move through the results, Escape clears).

import { debounce, describeError, el } from "./dom.js";

export class UserSearch {
  #client;
  #onPick;
  #input;
  #results;

  /** `onPick(user)` is called with the user whose result was chosen. */
  constructor(client, { input, form, results }, onPick) {
    this.#client = client;
    this.#onPick = onPick;
    this.#input = input;
    this.#results = results;
    const search = debounce((query) => this.#search(query), 200);
    input.addEventListener("input", () => search(input.value.trim()));
    form.addEventListener("submit", (submit) => {
      submit.preventDefault();
      results.querySelector("button")?.click();
    });
    input.addEventListener("keydown", (key) => {
      if (key.key === "Escape") {
        this.clear();
      } else if (key.key === "ArrowDown") {
        key.preventDefault();
        results.querySelector("button")?.focus();
      }
    });
    results.addEventListener("keydown", (key) => {
      const items = [...results.querySelectorAll("button")];
      const at = items.indexOf(document.activeElement);
      if (key.key === "ArrowDown" && at < items.length - 1) items[at + 1].focus();
      else if (key.key === "ArrowUp") (at > 0 ? items[at - 1] : input).focus();
      else return;
      key.preventDefault();
    });
  }

  clear() {
    this.#input.value = "";
    this.#show([]);
  }

  async #search(query) {
    if (!query) {
      this.#show([]);
      return;
    }
    try {
      const answer = await this.#client.api("GET", "/api/v1/users", { query: { q: query } });
      if (this.#input.value.trim() !== query) return; // a newer search is on its way
      this.#show(answer.items.filter((user) => user.id !== this.#client.user?.id), query);
    } catch (error) {
      this.#show([], query, describeError(error));
    }
  }

  #show(users, query, problem) {
    const items = users.map((user) => {
      const button = el("button", { className: "user-result", testid: "user-result",
        data: { userId: user.id }, attrs: { type: "button" }, text: user.username });
      button.addEventListener("click", () => this.#onPick(user));
      return el("li", {}, [button]);
    });
    if (query && items.length === 0) {
      items.push(el("li", { className: "empty", text: problem ?? `Nobody called “${query}…”` }));
    }
    this.#results.replaceChildren(...items);
    this.#results.hidden = items.length === 0;
  }
}
