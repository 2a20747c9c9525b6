// Types for notify-client.js (@appointment-notify/client: the appointment notification
// service's client for browsers and Node 20+).

/** `idle` before start(); `open` while events flow; `reconnecting` between streams; `closed` for good. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/**
 * `leader`: this tab holds the connection its browser's tabs share; `follower`: another
 * tab does; `solo`: a connection of its own (`share: false`, no Web Locks or
 * BroadcastChannel, Node, or no readable `sub` and no `shareKey`).
 */
export type TabRole = "leader" | "follower" | "solo";

export type AppointmentEventType =
  | "appointment.created"
  | "appointment.updated"
  | "appointment.rescheduled"
  | "appointment.cancelled"
  | "appointment.reminder"
  | "appointment.checked_in"
  | "appointment.note_added";

export interface AppointmentEvent {
  /** The Redis Stream id: resume from it, deduplicate by it. */
  id?: string;
  type: AppointmentEventType;
  patient_id: string;
  appointment_id: string;
  occurred_at: string;
  published_at?: string;
  data: {
    status?: string;
    starts_at?: string;
    ends_at?: string;
    location_id?: string;
    clinician_id?: string;
    [field: string]: unknown;
  };
}

export interface GapInfo {
  /** The oldest id history still holds: everything before it was missed. */
  oldest_id: string | null;
}

export interface NotifyClientOptions {
  /** The service's origin, e.g. "https://notify.clinic.example" (default: the page's). */
  baseUrl?: string;
  /** The app's current bearer token (called for every ticket and every renewal). */
  getToken: () => string | Promise<string>;
  /** "sse" (EventSource, default) or "websocket". */
  transport?: "sse" | "websocket";
  /** SSE route (default "/v1/patients/me/events"). */
  path?: string;
  /** WebSocket only: subscribe to one appointment instead of the whole stream. */
  appointmentId?: string;
  /**
   * Resume from this id (e.g. kept in sessionStorage). A tab that joins a leading tab
   * receives events from then on (and takes the leader's resume point); its own id
   * counts when it leads.
   */
  lastEventId?: string | null;
  /** First reconnect delay after a failure (doubles each time, jittered). Default 1000. */
  initialBackoffMs?: number;
  /** Longest reconnect delay. Default 30000. */
  maxBackoffMs?: number;
  /** How many delivered ids are remembered to drop duplicates. Default 1000. */
  seenIdsMax?: number;
  /**
   * Share one connection among this browser's tabs of the same patient and stream
   * (default true). Needs Web Locks and BroadcastChannel; without them each tab connects.
   */
  share?: boolean;
  /**
   * What tells patients apart for sharing (hashed before use). Default: the `sub`
   * claim of the token from getToken(), decoded (not verified) in the browser. Pass it
   * when tokens are opaque; tabs only share when it is equal.
   */
  shareKey?: string;
  /** The EventSource class (Node: `EventSource` from the `eventsource` package). Default: the global. */
  EventSource?: new (url: string) => EventSourceLike;
  /** The WebSocket class (Node 22's global, or the `ws` package). Default: the global. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** fetch() for ticket requests. Default: the global. */
  fetch?: (url: string, init: { method: string; headers: Record<string, string> }) => Promise<Response>;
  /** Each event, once. */
  onEvent?: (event: AppointmentEvent) => void;
  /** History no longer holds everything missed: refetch the app's state. */
  onGap?: (gap: GapInfo) => void;
  onStateChange?: (state: ConnectionState) => void;
  /** `lastEventId` moved without an event: the server's resume point when a stream opens. */
  onResumePoint?: (id: string) => void;
  /** This tab became the leader, a follower, or connects on its own. */
  onRoleChange?: (role: TabRole) => void;
  /**
   * Stopped for good: by the server ("revoked", "ticket_deleted"), or "unsupported"
   * (no EventSource / WebSocket implementation); not called for close().
   */
  onClosed?: (reason: string) => void;
  /**
   * A ticket request failed, a WebSocket error reply without a pending command, or no
   * EventSource / WebSocket implementation (then the client closes).
   */
  onError?: (error: Error) => void;
}

/** What the client uses of an EventSource. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  addEventListener(type: string, listener: (event: any) => void): void;
  close(): void;
}

/** What the client uses of a WebSocket. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number): void;
}

export interface CommandAccepted {
  type: "command_accepted";
  command_id: string;
  reply_to?: string;
}

/** The package's version (package.json); `/v1/client.js` reports it as `X-Client-Version`. */
export declare const VERSION: string;

export declare const EVENT_TYPES: readonly AppointmentEventType[];

export declare class NotifyClient {
  constructor(options: NotifyClientOptions);
  readonly state: ConnectionState;
  /** The id a reconnect resumes from (the last event, or the server's resume point). */
  readonly lastEventId: string | null;
  /** Known once started: see TabRole. */
  readonly role: TabRole | null;
  start(): void;
  close(): void;
  /** WebSocket transport only; from a follower tab it goes through the leader's socket. */
  command(
    action: "confirm" | "cancel" | "request_reschedule",
    appointmentId: string,
    extra?: { preferred_starts_at?: string },
  ): Promise<CommandAccepted>;
}

/** Creates and starts a client. */
export declare function connect(options: NotifyClientOptions): NotifyClient;

/** Orders Redis Stream ids ("<ms>-<seq>"): negative, 0 or positive. */
export declare function compareIds(a: string, b: string): number;
