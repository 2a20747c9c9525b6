// Appointment notifications: a dependency-free client (ES module) for browsers and
// Node 20+; the npm package @appointment-notify/client, also served at /v1/client.js.
//
//   import { NotifyClient } from "https://notify.example/v1/client.js";
//   const client = new NotifyClient({ baseUrl, getToken, onEvent, onGap });
//   client.start();
//
// What it does for a page (the server side is in the service's README and
// docs/websocket.md):
// - shares one connection among the browser's tabs of one patient (below);
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
// - exposes `state` and `onStateChange`, and `lastEventId`: the last event, or the
//   server's resume point from the moment the stream opens.
//
// Tab sharing (on by default; `share: false` turns it off). Tabs of one origin with
// the same patient, service and stream elect a leader with a Web Lock held for the
// tab's life (the browser hands it to a waiting tab the moment the holder closes or
// its renderer dies); only the leader connects. It passes events, gaps, state
// changes, resume points and closings to the other tabs over a BroadcastChannel, in
// order; every tab drops ids it already delivered, so each event reaches each tab
// once. A new leader first asks the others for the last id they saw and resumes
// from the latest, so a hand-over neither loses nor repeats. A leader that closes for
// good (revoked) tells the other tabs, and also leaves that news in the lock manager
// (`_handOverClosed`): a waiting tab may be granted the lock before the message
// arrives (the two travel separately), and must close, not take over. WebSocket
// commands from a follower go through the leader; the answer comes back to the asking
// tab. The lock and channel names hold a hash of the token's `sub` claim (decoded
// here, not verified: only to tell patients apart) or of the `shareKey` option, never
// the id itself. Without Web Locks or BroadcastChannel (or without a readable `sub` and no
// `shareKey`) every tab connects on its own.
//
// Under Node (20+) pass `EventSource` (e.g. the `eventsource` package) and, for the
// WebSocket transport, `WebSocket` (Node 22's global is used when present); a
// missing implementation is reported through `onError` and the client closes.

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
  share: true,
};
// A new leader waits this long for the other tabs' last ids before it connects: they
// answer at once (a message to a live tab), and the server's history covers the wait.
const RESUME_GATHER_MS = 150;
// The token fetched to derive the share key is reused for the first ticket if it is
// this fresh (one getToken() call per connection, as without sharing).
const SPARE_TOKEN_MS = 5000;

export class NotifyClient {
  /** @param {import("./notify-client").NotifyClientOptions} options */
  constructor(options) {
    if (!options || typeof options.getToken !== "function") {
      throw new TypeError("NotifyClient needs a getToken() callback");
    }
    this.options = { ...DEFAULTS, ...options };
    this.baseUrl = String(options.baseUrl ?? globalThis.location?.origin ?? "").replace(/\/$/, "");
    if (!this.baseUrl) throw new TypeError("NotifyClient needs a baseUrl outside a browser page");
    /** @type {import("./notify-client").ConnectionState} */
    this.state = "idle";
    /** "leader" or "follower" while tabs share, "solo" with a connection of its own. */
    this.role = null;
    this.tabId = Math.random().toString(36).slice(2) + Date.now().toString(36);
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
    this._channel = null; // BroadcastChannel to the other tabs
    this._lockName = null; // the Web Lock of the tabs sharing with this one
    this._lockAbort = null; // withdraws a queued lock request
    this._releaseLock = null; // ends the held lock
    this._remote = new Map(); // a follower's commands sent to the leader: id -> { resolve, reject }
    this._spareToken = null;
  }

  /** Open the stream (idempotent). */
  start() {
    if (this._stopped || this.state !== "idle") return;
    this._setState("connecting");
    this._begin().catch((error) => this._report(error));
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
    if (this.options.transport !== "websocket") {
      return Promise.reject(new Error("commands need the WebSocket transport"));
    }
    if (this.role === "follower") {
      // The leader's socket sends it; the answer comes back to this tab only.
      const id = `${this.tabId}:${this._nextId++}`;
      return new Promise((resolve, reject) => {
        this._remote.set(id, { resolve, reject });
        this._tell({ kind: "command", from: this.tabId, id, action, appointmentId, extra });
      });
    }
    return this._command(action, appointmentId, extra);
  }

  _command(action, appointmentId, extra) {
    const socket = this._socket;
    if (!socket || socket.readyState !== 1) {
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
    // A leader's own close() is not the followers' end: one of them takes over.
    if (this.role === "leader" && state !== "closed") {
      this._tell({ kind: "state", state, lastEventId: this.lastEventId });
    }
    this.options.onStateChange?.(state);
  }

  _stop(reason) {
    if (this._stopped) return;
    const final = this.role === "leader" && reason !== "client" && this._releaseLock !== null;
    if (this.role === "leader" && reason !== "client") this._tell({ kind: "closed", reason });
    this._stopped = true;
    clearTimeout(this._timer);
    this._lockAbort?.abort();
    if (final) {
      const release = this._releaseLock;
      this._handOverClosed(reason, release).catch((error) => {
        release();
        this._report(error);
      });
    } else {
      this._releaseLock?.();
    }
    this._releaseLock = null;
    this._channel?.close();
    this._channel = null;
    for (const { reject } of this._remote.values()) reject(new Error("closed"));
    this._remote.clear();
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
    const spare = this._spareToken;
    this._spareToken = null;
    const fresh = spare && Date.now() - spare.at < SPARE_TOKEN_MS;
    const token = fresh ? spare.token : await this.options.getToken();
    const fetcher = this.options.fetch ?? globalThis.fetch;
    const response = await fetcher(`${this.baseUrl}/v1/stream-tickets`, {
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
    return newer;
  }

  /** The resume point moved without an event (the server's, at open; another tab's). */
  _resumePoint(id) {
    if (!id || !this._advance(id)) return;
    if (this.role === "leader") this._tell({ kind: "at", lastEventId: this.lastEventId });
    this.options.onResumePoint?.(this.lastEventId);
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

  /** An event from this tab's own stream: delivered here, and to the other tabs. */
  _received(event) {
    if (this._deliver(event) && this.role === "leader") this._tell({ kind: "event", event });
  }

  _gap(gap) {
    if (this.role === "leader") this._tell({ kind: "gap", gap });
    this.options.onGap?.(gap);
  }

  async _open() {
    if (this._stopped) return;
    const websocket = this.options.transport === "websocket";
    const Impl = websocket ? this._WebSocket() : this._EventSource();
    if (typeof Impl !== "function") {
      // Under Node without the option (or an old runtime): nothing can ever connect.
      const name = websocket ? "WebSocket" : "EventSource";
      this._report(
        new Error(`no ${name} implementation: pass the \`${name}\` option (see the README)`),
      );
      this._stop("unsupported");
      return;
    }
    let ticket;
    try {
      ticket = await this._ticket();
    } catch (error) {
      this._report(error);
      this._retry();
      return;
    }
    if (this._stopped) return;
    try {
      if (websocket) this._openSocket(ticket);
      else this._openSource(ticket, false);
    } catch (error) {
      this._report(error);
      this._retry();
    }
  }

  _EventSource() {
    return this.options.EventSource ?? globalThis.EventSource;
  }

  _WebSocket() {
    return this.options.WebSocket ?? globalThis.WebSocket;
  }

  // --- tabs ----------------------------------------------------------------------------

  async _begin() {
    if (this.options.share !== false && sharingSupported()) {
      const key = await this._shareKey();
      if (this._stopped) return;
      if (key) {
        this._joinTabs(key);
        return;
      }
    }
    this._setRole("solo");
    await this._open();
  }

  /** A hash of the stream's scope and its subject: tabs share only when all match. */
  async _shareKey() {
    let subject = this.options.shareKey;
    if (subject == null) {
      let token;
      try {
        token = await this.options.getToken();
      } catch (error) {
        this._report(error);
        return null; // on its own: the ticket request retries getToken
      }
      this._spareToken = { token, at: Date.now() };
      subject = subjectOf(token);
      if (subject == null) return null; // not a JWT we can read: no sharing
    }
    const { transport, path, appointmentId } = this.options;
    const scope = [this.baseUrl, transport, path, appointmentId ?? "", String(subject)];
    return digest(JSON.stringify(scope));
  }

  _joinTabs(key) {
    const name = `appointment-notify:${key}`;
    this._lockName = name;
    const channel = new BroadcastChannel(name);
    this._channel = channel;
    channel.onmessage = (e) => this._onTab(e.data);
    const abort = new AbortController();
    this._lockAbort = abort;
    const lead = (check) =>
      new Promise((release) => {
        this._releaseLock = release;
        this._takeOver(check).catch((error) => this._report(error));
      });
    // First without waiting: a tab that finds no leader leads at once (no follower
    // state first); otherwise it follows and queues for the lock.
    const follow = () =>
      navigator.locks.request(name, { signal: abort.signal }, () =>
        this._stopped ? null : lead(true),
      );
    navigator.locks
      .request(name, { ifAvailable: true }, (lock) => {
        if (this._stopped) return null;
        if (lock) return lead(false);
        this._spareToken = null;
        this._setRole("follower");
        this._tell({ kind: "hello", from: this.tabId });
        follow().catch((error) => error?.name === "AbortError" || this._report(error));
        return null;
      })
      .catch((error) => this._report(error));
  }

  /**
   * A leader closing for good passes the lock on with the reason. Its `closed` message
   * and the lock's grant to a waiting tab go separate ways (in Chromium, separate
   * pipes to the browser process): the waiting tab may hold the lock before it sees
   * the message. So the news also goes through the lock manager, whose requests,
   * grants and queries are ordered: a marker lock named with the reason, held while
   * this tab queues for the tab lock once more in "shared" mode (every other request
   * is exclusive) behind the tabs waiting now. A tab granted the lock while that
   * shared request waits was queued before the close: it closes too (`_closedBefore`).
   * The shared request is granted once they all had their turn (or withdrew on the
   * message); tabs that came later take over as after any hand-over.
   */
  async _handOverClosed(reason, release) {
    const name = this._lockName;
    const marker = `${name}:closed:${this.tabId}:${reason}`;
    let done;
    const held = new Promise((resolve) => {
      done = resolve;
    });
    let granted;
    const markerHeld = new Promise((resolve) => {
      granted = resolve;
    });
    const markerRequest = navigator.locks.request(marker, () => {
      granted();
      return held;
    });
    try {
      // (The request itself settles only on a failure before the grant.)
      await Promise.race([markerHeld, markerRequest]);
      const last = navigator.locks.request(name, { mode: "shared" }, () => done());
      // Requests and queries share one ordered path: once the query answers, the shared
      // request is queued behind the waiting tabs, and the lock can go.
      await navigator.locks.query();
      release();
      await last;
    } finally {
      done();
    }
  }

  /** The reason of a leader's close that this tab, just granted the lock, missed. */
  async _closedBefore() {
    const name = this._lockName;
    let state;
    try {
      state = await navigator.locks.query();
    } catch (error) {
      this._report(error);
      return null; // no news: take over, as after any hand-over
    }
    const { held = [], pending = [] } = state;
    if (!pending.some((lock) => lock.name === name && lock.mode === "shared")) return null;
    const prefix = `${name}:closed:`;
    const marker = held.find((lock) => lock.name?.startsWith(prefix));
    if (!marker) return null;
    const rest = marker.name.slice(prefix.length);
    return rest.slice(rest.indexOf(":") + 1);
  }

  async _takeOver(check) {
    if (check) {
      // The leader before may have closed for good, its message still on the way.
      const reason = await this._closedBefore();
      if (this._stopped) return;
      if (reason !== null) {
        this._stop(reason);
        return;
      }
    }
    const followed = this.role === "follower";
    this._setRole("leader");
    // Commands the old leader never answered are lost with it: followers reject them.
    this._tell({ kind: "leader", from: this.tabId });
    for (const { reject } of this._remote.values()) reject(new Error("the leading tab changed"));
    this._remote.clear();
    if (followed) {
      // Resume from the last id any tab saw (answers advance lastEventId).
      this._tell({ kind: "resume?", from: this.tabId });
      await new Promise((resolve) => setTimeout(resolve, RESUME_GATHER_MS));
      if (this._stopped) return;
      if (this.state === "open") this._setState("reconnecting");
    }
    await this._open();
  }

  _setRole(role) {
    if (this.role === role) return;
    this.role = role;
    this.options.onRoleChange?.(role);
  }

  _tell(message) {
    this._channel?.postMessage(message);
  }

  _onTab(m) {
    if (this._stopped || !m) return;
    const leader = this.role === "leader";
    switch (m.kind) {
      case "event":
        // Also a new leader's: the old one's last messages may arrive after the hand-over.
        this._deliver(m.event);
        break;
      case "gap":
        if (!leader) this.options.onGap?.(m.gap);
        break;
      case "state":
        if (!leader) {
          this._resumePoint(m.lastEventId);
          this._setState(m.state);
        }
        break;
      case "at":
      case "resume":
        this._resumePoint(m.lastEventId);
        break;
      case "closed":
        this._stop(m.reason);
        break;
      case "hello":
        if (leader) this._tell({ kind: "sync", to: m.from, state: this.state, lastEventId: this.lastEventId });
        break;
      case "sync":
        if (m.to === this.tabId) {
          this._resumePoint(m.lastEventId);
          if (!leader) this._setState(m.state);
        }
        break;
      case "resume?":
        if (m.from !== this.tabId) this._tell({ kind: "resume", lastEventId: this.lastEventId });
        break;
      case "leader":
        for (const { reject } of this._remote.values()) reject(new Error("the leading tab changed"));
        this._remote.clear();
        break;
      case "command":
        if (leader) this._answer(m);
        break;
      case "reply": {
        const pending = this._remote.get(m.id);
        if (m.to !== this.tabId || !pending) break;
        this._remote.delete(m.id);
        if (m.ok) pending.resolve(m.reply);
        else pending.reject(Object.assign(new Error(m.error.message), m.error));
        break;
      }
      default:
        break;
    }
  }

  _answer({ from, id, action, appointmentId, extra }) {
    this._command(action, appointmentId, extra).then(
      (reply) => this._tell({ kind: "reply", to: from, id, ok: true, reply }),
      (error) =>
        this._tell({
          kind: "reply",
          to: from,
          id,
          ok: false,
          error: { ...error, message: String(error?.message ?? error) },
        }),
    );
  }

  // --- EventSource -------------------------------------------------------------------

  _sourceUrl(ticket) {
    const url = new URL(this.baseUrl + this.options.path, globalThis.location?.href);
    url.searchParams.set("ticket", ticket);
    if (this.lastEventId) url.searchParams.set("last_event_id", this.lastEventId);
    return url.toString();
  }

  _openSource(ticket, renewal) {
    const EventSourceImpl = this._EventSource();
    const source = new EventSourceImpl(this._sourceUrl(ticket));
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
      if (source.readyState === 2) {
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
      this._received(event);
    };
    for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
    source.addEventListener("message", onEvent);
    source.addEventListener("gap", (e) => {
      track(e);
      if (current()) this._gap(JSON.parse(e.data));
    });
    source.addEventListener("resume_point", (e) => {
      // Right after a fresh stream opens: the history head, the id to resume from
      // even if no event arrives before a drop.
      if (current() || source === this._renewing) this._resumePoint(JSON.parse(e.data).id);
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
    const WebSocketImpl = this._WebSocket();
    const socket = new WebSocketImpl(url.toString());
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
        message = JSON.parse(String(e.data));
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
        this._resumePoint(message.resume_point);
        this._setState("open");
        break;
      case "event":
        this._received(message.event);
        break;
      case "events":
        for (const event of message.events) this._received(event);
        break;
      case "gap":
        this._gap({ oldest_id: message.oldest_id });
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

function sharingSupported() {
  const locks = globalThis.navigator?.locks;
  return (
    typeof locks?.request === "function" &&
    typeof locks.query === "function" &&
    typeof BroadcastChannel === "function"
  );
}

/** The `sub` claim of a JWT, decoded but not verified (the server verifies). */
function subjectOf(token) {
  const payload = String(token).split(".")[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(base64 + "===".slice((base64.length + 3) % 4)), (c) => c.charCodeAt(0));
    const sub = JSON.parse(new TextDecoder().decode(bytes)).sub;
    return typeof sub === "string" && sub ? sub : null;
  } catch {
    return null;
  }
}

/** Hex digest: SHA-256 where WebCrypto exists (secure contexts), else two FNV-1a. */
async function digest(text) {
  const bytes = new TextEncoder().encode(text);
  const subtle = globalThis.crypto?.subtle;
  if (subtle) {
    const hash = new Uint8Array(await subtle.digest("SHA-256", bytes));
    return Array.from(hash.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  let a = 0x811c9dc5;
  let b = 0x050c5d1f;
  for (const byte of bytes) {
    a = Math.imul(a ^ byte, 0x01000193);
    b = Math.imul(b ^ byte, 0x01000193);
  }
  return [a, b].map((h) => (h >>> 0).toString(16).padStart(8, "0")).join("");
}

/** Shorthand: `connect(options)` creates and starts a client. */
export function connect(options) {
  const client = new NotifyClient(options);
  client.start();
  return client;
}
