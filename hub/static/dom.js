// Small DOM helpers for the chat page. Text only ever goes in through textContent: nothing a user
// typed is parsed as HTML anywhere on the page.

/** The element with `data-testid="<id>"` under `root`. */
export function byTestId(id, root = document) {
  const found = root.querySelector(`[data-testid="${id}"]`);
  if (!found) throw new Error(`page is missing [data-testid="${id}"]`);
  return found;
}

/**
 * Create an element. `text` becomes its textContent; `data` its data-* attributes; `attrs` plain
 * attributes (never event handlers or style: the page's policy allows neither inline).
 */
export function el(tag, { className, text, testid, data, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (testid) node.dataset.testid = testid;
  for (const [name, value] of Object.entries(data ?? {})) node.dataset[name] = String(value);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (/^on/i.test(name) || name === "style") throw new Error(`el(): refusing attribute ${name}`);
    if (value !== false && value !== undefined && value !== null) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Show or hide an element with a text message (empty hides it). */
export function say(node, message) {
  node.textContent = message ?? "";
  node.hidden = !message;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

/** "14:05" for today, "Nov 22 14:05" for other days; "" for a missing time. */
export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  return sameDay ? timeFormat.format(date) : `${dayFormat.format(date)} ${timeFormat.format(date)}`;
}

/** A random printable key (for Idempotency-Key); works outside secure contexts too. */
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Call `fn` once `ms` after the last of a burst of calls. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** A short human sentence for an error thrown by HubClient.api (or anything else). */
export function describeError(error) {
  if (error?.name === "HubError") {
    if (error.status === 0) return "The hub cannot be reached right now; try again in a moment.";
    return error.detail || error.code;
  }
  return String(error?.message ?? error);
}
