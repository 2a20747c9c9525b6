// Types for notify-client.js (the appointment notification service's browser client).

/** `idle` before start(); `open` while events flow; `reconnecting` between streams; `closed` for good. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

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
  /** Resume from this id (e.g. kept in sessionStorage). */
  lastEventId?: string | null;
  /** First reconnect delay after a failure (doubles each time, jittered). Default 1000. */
  initialBackoffMs?: number;
  /** Longest reconnect delay. Default 30000. */
  maxBackoffMs?: number;
  /** How many delivered ids are remembered to drop duplicates. Default 1000. */
  seenIdsMax?: number;
  /** Each event, once. */
  onEvent?: (event: AppointmentEvent) => void;
  /** History no longer holds everything missed: refetch the app's state. */
  onGap?: (gap: GapInfo) => void;
  onStateChange?: (state: ConnectionState) => void;
  /** Stopped for good by the server ("revoked", "ticket_deleted"); not called for close(). */
  onClosed?: (reason: string) => void;
  /** A ticket request failed, or a WebSocket error reply without a pending command. */
  onError?: (error: Error) => void;
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
  start(): void;
  close(): void;
  /** WebSocket transport only. */
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
