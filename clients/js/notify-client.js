// Appointment notifications: a dependency-free browser client (ES module).
//
//   import { NotifyClient } from "https://notify.example/v1/client.js";
//   const client = new NotifyClient({ baseUrl, getToken, onEvent, onGap });
//   client.start();
//
// What it does for a page (the server side is in the service's README and
// docs/websocket.md):
// - gets a stream ticket from `getToken()` (POST /v1/stream-tickets with the bearer
//   token): tokens never go in a URL;
// - opens an EventSource (default) or a WebSocket (`transport: "websocket"`);
// - renews before the token expires (`token_expiring`) with no gap: a new ticket and
//   a second stream from the last id, the old one closed once the new one is open
//   (WebSocket: a fresh `auth` frame on the same socket);
// - recovers when the browser's EventSource has given up (readyState CLOSED after a
//   non-200 such as a proxy's 502 during a restart): a new ticket and
//   `last_event_id`, after a jittered exponential backoff;
// - stops for good on `closed` (revoked credentials) and calls `onClosed`;
// - calls `onGap` when history no longer holds everything missed (refetch state);
// - drops ids it has already delivered (a bounded set);
// - exposes `state` and `onStateChange`.

/** The package's version (package.json); `/v1/client.js` reports it as `X-Client-Version`. */
export const VERSION = "0.2.0";

/** Event types the service publishes (EventSource only dispatches names listened for). */
export const EVENT_TYPES = Object.freeze([
  "appointment.created",
  "appointment.updated",
  "appointment.rescheduled",
  "appointment.cancelled",
  "appointment.reminder",
  "appointment.checked_in",
  "appointment.note_added",
]);

/** Reasons after which the same credentials will never work again. */
const FINAL_REASONS = new Set(["revoked", "ticket_deleted"]);
const WS_REVOKED = 4003;

const DEFAULTS = {
  transport: "sse",
  path: "/v1/patients/me/events",
  initialBackoffMs: 1000,
  maxBackoffMs: 30000,
  seenIdsMax: 1000,
};

export class NotifyClient {
  /** @param {import("./notify-client").NotifyClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== "function") {
      throw new TypeError("NotifyClient needs a getToken() callback");
    }
    this.options = { ...DEFAULTS, ...options };
    this.baseUrl = String(options.baseUrl ?? globalThis.location?.origin ?? "").replace(/\/$/, "");
    /** @type {import("./notify-client").ConnectionState} */
    this.state = "idle";
    /** The id to resume from: the last event delivered, or the server's resume point. */
    this.lastEventId = options.lastEventId ?? null;
    this._seen = new Set();
    this._seenOrder = [];
    this._attempt = 0;
    this._timer = null;
    this._source = null; // the live EventSource
    this._renewing = null; // the EventSource replacing it during a renewal
    this._socket = null;
    this._hintMs = null; // `retry_ms` of the last WebSocket `reconnect` hint
    this._pending = new Map(); // WebSocket command id -> { resolve, reject }
    this._nextId = 1;
    this._stopped = false;
  }

  /** Open the stream (idempotent). */
  start() {
    if (this._stopped || this.state !== "idle") return;
    this._setState("connecting");
    this._open();
  }

  /** Close for good: nothing reconnects afterwards. */
  close() {
    this._stop("client");
  }

  /**
   * Send a WebSocket command (`confirm`, `cancel`, `request_reschedule`); resolves
   * with the `command_accepted` reply, rejects with an `error` reply.
   * @returns {Promise<{type: "command_accepted", command_id: string}>}
   */
  command(action, appointmentId, extra = {}) {
    const socket = this._socket;
    if (this.options.transport !== "websocket" || !socket || socket.readyState !== 1) {
      return Promise.reject(new Error("commands need an open WebSocket"));
    }
    const id = `c${this._nextId++}`;
    return new Promise((resolve, reject) => {
      this._pending.set(id, { resolve, reject });
      socket.send(
        JSON.stringify({ type: "command", id, action, appointment_id: appointmentId, ...extra }),
      );
    });
  }

  // --- shared ----------------------------------------------------------------------

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.options.onStateChange?.(state);
  }

  _stop(reason) {
    if (this._stopped) return;
    this._stopped = true;
    clearTimeout(this._timer);
    for (const source of [this._source, this._renewing]) source?.close();
    this._source = this._renewing = null;
    if (this._socket) {
      const socket = this._socket;
      this._socket = null;
      socket.close(1000);
    }
    for (const { reject } of this._pending.values()) reject(new Error("closed"));
    this._pending.clear();
    this._setState("closed");
    if (reason !== "client") this.options.onClosed?.(reason);
  }

  _report(error) {
    this.options.onError?.(error);
  }

  /** Jittered exponential backoff: [0.5, 1] × min(max, initial × 2^attempt). */
  _backoffMs() {
    const { initialBackoffMs, maxBackoffMs } = this.options;
    const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** this._attempt);
    this._attempt += 1;
    return Math.round(ceiling * (0.5 + Math.random() / 2));
  }

  _retry(delayMs) {
    if (this._stopped) return;
    this._setState("reconnecting");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delayMs ?? this._backoffMs());
  }

  async _ticket() {
    const token = await this.options.getToken();
    const response = await fetch(`${this.baseUrl}/v1/stream-tickets`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    if (response.status !== 201) {
      throw new Error(`stream ticket refused: HTTP ${response.status}`);
    }
    return (await response.json()).ticket;
  }

  /** Move the resume point forward (never back: two streams overlap during a renewal). */
  _advance(id) {
    let newer = true;
    try {
      newer = !this.lastEventId || compareIds(id, this.lastEventId) > 0;
    } catch {
      // Not a stream id (an opaque id from elsewhere): the latest one wins.
    }
    if (newer) this.lastEventId = id;
  }

  /** Deliver an event once; returns false for an id already delivered. */
  _deliver(event) {
    const id = event.id;
    if (id) {
      if (this._seen.has(id)) return false;
      this._seen.add(id);
      this._seenOrder.push(id);
      if (this._seenOrder.length > this.options.seenIdsMax) {
        this._seen.delete(this._seenOrder.shift());
      }
      this._advance(id);
    }
    this.options.onEvent?.(event);
    return true;
  }

  async _open() {
    if (this._stopped) return;
    let ticket;
    try {
      ticket = await this._ticket();
    } catch (error) {
      this._report(error);
      this._retry();
      return;
    }
    if (this._stopped) return;
    if (this.options.transport === "websocket") this._openSocket(ticket);
    else this._openSource(ticket, false);
  }

  // --- EventSource -------------------------------------------------------------------

  _sourceUrl(ticket) {
    const url = new URL(this.baseUrl + this.options.path, globalThis.location?.href);
    url.searchParams.set("ticket", ticket);
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    return url.toString();
  }

  _openSource(ticket, renewal) {
    const source = new EventSource(this._sourceUrl(ticket));
    if (renewal) this._renewing = source;
    else this._source = source;
    const current = () => source === this._source;
    const track = (e) => {
      // Every dispatched event carries the stream's last event id, including the
      // id-only block the server sends first: the resume point before any event.
      if (e.lastEventId && (current() || source === this._renewing)) this._advance(e.lastEventId);
    };
    source.onopen = () => {
      if (source === this._renewing) {
        // The new stream is up: the old one can go, nothing was missed.
        this._source?.close();
        this._source = source;
        this._renewing = null;
      }
      if (current()) {
        this._attempt = 0;
        this._setState("open");
      }
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (a non-200: 401, 502, 503 ...): a new ticket, later.
        if (source === this._renewing) {
          this._renewing = null;
          return;
        }
        if (!current()) return;
        this._source = null;
        this._retry();
      } else if (current()) {
        // The browser reconnects by itself after the server's `retry:`.
        this._setState("reconnecting");
      }
    };
    const onEvent = (e) => {
      track(e);
      let event;
      try {
        event = JSON.parse(e.data);
      } catch {
        return;
      }
      if (!event.id && e.lastEventId) event.id = e.lastEventId;
      this._deliver(event);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.addEventListener("message", onEvent);
    source.addEventListener("gap", (e) => {
      track(e);
      if (current()) this.options.onGap?.(JSON.parse(e.data));
    });
    source.addEventListener("reconnect", (e) => {
      track(e);
      // A retry-able end (shutdown, over capacity, too slow): the browser comes back
      // by itself after `retry:`, with Last-Event-ID.
      if (current()) this._setState("reconnecting");
    });
    source.addEventListener("token_expiring", (e) => {
      track(e);
      if (current()) this._renew();
    });
    source.addEventListener("closed", (e) => {
      track(e);
      const reason = JSON.parse(e.data).reason;
      source.close();
      if (!current()) return; // an old stream ending after its renewal
      this._source = null;
      if (FINAL_REASONS.has(reason)) this._stop(reason);
      else this._retry(0); // token_expired with no renewal yet: a new token now
    });
  }

  async _renew() {
    if (this._renewing || this._stopped) return;
    try {
      const ticket = await this._ticket();
      if (!this._stopped && !this._renewing) this._openSource(ticket, true);
    } catch (error) {
      // The old stream runs until the token expires; its `closed` retries then.
      this._report(error);
    }
  }

  // --- WebSocket ------------------------------------------------------------------------

  _openSocket(ticket) {
    const url = new URL(this.baseUrl + "/v1/ws", globalThis.location?.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("ticket", ticket);
    const socket = new WebSocket(url.toString());
    this._socket = socket;
    socket.onopen = () => {
      const subscribe = { type: "subscribe" };
      if (this.options.appointmentId) subscribe.appointment_id = this.options.appointmentId;
      if (this.lastEventId) subscribe.since = this.lastEventId;
      socket.send(JSON.stringify(subscribe));
    };
    socket.onmessage = (e) => {
      let message;
      try {
        message = JSON.parse(e.data);
      } catch {
        return;
      }
      this._onSocketMessage(socket, message);
    };
    socket.onclose = (e) => {
      if (socket !== this._socket) return;
      this._socket = null;
      for (const { reject } of this._pending.values()) reject(new Error(`closed ${e.code}`));
      this._pending.clear();
      if (e.code === WS_REVOKED) {
        this._stop(e.reason || "revoked");
        return;
      }
      const hint = this._hintMs;
      this._hintMs = null;
      this._retry(hint ?? undefined);
    };
  }

  _onSocketMessage(socket, message) {
    switch (message.type) {
      case "subscribed":
        this._attempt = 0;
        // The `since` to use if the socket drops before any event arrives.
        if (!this.lastEventId && message.resume_point) this.lastEventId = message.resume_point;
        this._setState("open");
        break;
      case "event":
        this._deliver(message.event);
        break;
      case "events":
        for (const event of message.events) this._deliver(event);
        break;
      case "gap":
        this.options.onGap?.({ oldest_id: message.oldest_id });
        break;
      case "token_expiring":
        // A fresh token on the same socket extends it: no reconnect, no gap.
        Promise.resolve(this.options.getToken()).then(
          (token) => socket.readyState === 1 && socket.send(JSON.stringify({ type: "auth", token })),
          (error) => this._report(error),
        );
        break;
      case "reconnect":
        this._hintMs = message.retry_ms ?? null;
        this._setState("reconnecting");
        break;
      case "command_accepted":
      case "error": {
        const pending = message.reply_to && this._pending.get(message.reply_to);
        if (pending) {
          this._pending.delete(message.reply_to);
          if (message.type === "error") pending.reject(Object.assign(new Error(message.message), message));
          else pending.resolve(message);
        } else if (message.type === "error") {
          this._report(Object.assign(new Error(message.message), message));
        }
        break;
      }
      default:
        break;
    }
  }
}

/** Orders Redis Stream ids ("<ms>-<seq>"). */
export function compareIds(a, b) {
  const [am, as = "0"] = String(a).split("-");
  const [bm, bs = "0"] = String(b).split("-");
  const major = BigInt(am) - BigInt(bm);
  if (major !== 0n) return major > 0n ? 1 : -1;
  const minor = BigInt(as) - BigInt(bs);
  return minor === 0n ? 0 : minor > 0n ? 1 : -1;
}

/** Shorthand: `connect(options)` creates and starts a client. */
export function connect(options) {
  const client = new NotifyClient(options);
  client.start();
  return client;
}
