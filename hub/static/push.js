// Web Push for the page (protocol §13): a "Notify me" button, shown when the browser can do
// push and this browser is not subscribed yet, that on a click (never by itself) asks the hub
// for its VAPID key (a hub with push off answers 404: the button says so), asks permission,
// registers the service worker /sw.js, subscribes and gives the subscription to the hub. The
// hub then pushes what this user has not seen on any device. Nothing is requested before the
// click, so a hub with push off sees no failing call from the page.

import { describeError } from "./dom.js";

function keyBytes(base64url) {
  const text = atob(base64url.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(text, (char) => char.charCodeAt(0));
}

export class PushButton {
  #client;
  #button;

  constructor(client, button) {
    this.#client = client;
    this.#button = button;
    button.addEventListener("click", () => this.#enable());
  }

  /** After sign-in: offer the button, or renew this browser's subscription for the new user. */
  async offer() {
    this.#button.hidden = true;
    if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) return;
    const registration = await navigator.serviceWorker.getRegistration("/");
    const subscription = await registration?.pushManager.getSubscription();
    if (subscription && Notification.permission === "granted") {
      await this.#send(subscription); // the same endpoint again is the same id (200)
      return;
    }
    this.#button.hidden = Notification.permission === "denied";
  }

  async #enable() {
    try {
      let publicKey;
      try {
        publicKey = (await this.#client.api("GET", "/api/v1/push/key")).public_key;
      } catch {
        this.#failed("Notifications are off on this hub.");
        return;
      }
      if ((await Notification.requestPermission()) !== "granted") {
        this.#failed("Notifications are blocked in this browser's settings.");
        return;
      }
      const registration = await navigator.serviceWorker.register("/sw.js");
      await navigator.serviceWorker.ready;
      const subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true, applicationServerKey: keyBytes(publicKey),
      });
      await this.#send(subscription);
      this.#button.hidden = true;
    } catch (error) {
      this.#failed(describeError(error));
    }
  }

  #failed(reason) {
    this.#button.textContent = "Notifications unavailable";
    this.#button.title = reason;
    this.#button.dataset.error = reason;
  }

  #send(subscription) {
    return this.#client.api("POST", "/api/v1/push/subscriptions", { body: subscription.toJSON() });
  }
}

/** The chat a notification's click asked for (`/?chat=<id>`), once; the address is cleaned. */
export function requestedChat() {
  const params = new URLSearchParams(window.location.search);
  const chatId = Number(params.get("chat"));
  if (params.has("chat")) window.history.replaceState(null, "", window.location.pathname);
  return Number.isInteger(chatId) && chatId > 0 ? chatId : null;
}

/** The chat was read on this page: its notifications on this device close (/sw.js does it). */
export function closeChatNotifications(chatId) {
  if (!("serviceWorker" in navigator)) return;
  navigator.serviceWorker.getRegistration("/")
    .then((registration) => registration?.active?.postMessage({ close: `chat-${chatId}` }))
    .catch(() => {}); // no service worker, nothing shown
}
