"""`/demo`: the browser client at work, for development only.

The page mints a development token for the demo patient server-side (the same
minting as `notify token`), opens its stream with `/v1/client.js`, shows each event
as it arrives (with its id), the connection state, the resume point and whether this
tab leads (holds the connection its browser's tabs share) or follows, and publishes a
sample event through the publish service at the press of a button. It recovers by itself when
the server restarts (that is the client's job). With `NOTIFY_ENV=production` every
route here is a 404: a production service mints no tokens and publishes nothing on
a browser's say-so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final

from fastapi import APIRouter, Depends
from notify_publisher.events import EventCreate, EventResponse, EventType
from pydantic import BaseModel
from starlette.responses import HTMLResponse

from service.deps.state import StateDep
from service.services.errors import NotFoundError
from service.services.publisher import publish
from service.services.tokens import mint_token
from service.state import AppState

router = APIRouter(tags=["development"])

DEMO_PATIENT: Final = "pt_demo"
# Long enough for an afternoon of development; the page asks for a new one on renewal.
DEMO_TOKEN_TTL_S: Final = 3600
SAMPLE_TYPES: Final = (
    EventType("appointment.created"),
    EventType("appointment.rescheduled"),
    EventType("appointment.reminder"),
    EventType("appointment.checked_in"),
    EventType("appointment.cancelled"),
)


class DemoToken(BaseModel):
    token: str
    patient_id: str


def development_only(state: StateDep) -> AppState:
    """404 in production (and whenever no development HMAC secret is configured)."""
    if state.settings.env == "production" or state.settings.jwt_hmac_secret() is None:
        raise NotFoundError()
    return state


DevState = Annotated[AppState, Depends(development_only)]


@router.get("/demo", include_in_schema=False)
async def demo_page(_: DevState) -> HTMLResponse:
    return HTMLResponse(DEMO_HTML, headers={"Cache-Control": "no-store"})


@router.post("/demo/token", include_in_schema=False)
async def demo_token(state: DevState) -> DemoToken:
    """A development token for the demo patient (what an app's login would give)."""
    secret = state.settings.jwt_hmac_secret()
    assert secret is not None  # development_only checked it
    token = mint_token(
        secret=secret,
        sub=DEMO_PATIENT,
        audience=state.settings.jwt_audience,
        issuer=state.settings.jwt_issuer,
        ttl_s=DEMO_TOKEN_TTL_S,
    )
    return DemoToken(token=token, patient_id=DEMO_PATIENT)


@router.post("/demo/events", include_in_schema=False, status_code=201)
async def demo_publish(state: DevState) -> EventResponse:
    """Publish a sample event for the demo patient through the one publish path."""
    # From the clock, not a per-process counter: a restarted server does not start over.
    n = time.time_ns() // 1_000_000
    starts = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    event = EventCreate.model_validate(
        {
            "type": SAMPLE_TYPES[n % len(SAMPLE_TYPES)],
            "patient_id": DEMO_PATIENT,
            "appointment_id": f"ap_demo_{n % 1000}",
            "occurred_at": datetime.now(UTC),
            "data": {
                "status": "scheduled",
                "starts_at": starts,
                "ends_at": starts + timedelta(minutes=30),
                "location_id": "loc_demo",
                "clinician_id": "cl_demo",
            },
        }
    )
    stored = await publish(
        broker=state.broker,
        keys=state.keys,
        event=event,
        history_maxlen=state.settings.history_maxlen,
        history_ttl_s=state.settings.history_ttl_s,
    )
    return EventResponse.model_validate(stored.event.model_dump())


DEMO_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Appointment notifications: demo</title>
<style>
  :root { font-family: "DejaVu Sans", system-ui, sans-serif; color: #1d2733; background: #f4f6f9; }
  body { margin: 0; }
  header { background: #20405f; color: #fff; padding: 18px 32px; }
  header h1 { margin: 0; font-size: 22px; font-weight: 600; }
  header p { margin: 4px 0 0; opacity: .8; font-size: 14px; }
  main { padding: 24px 32px; max-width: 980px; }
  .bar { display: flex; gap: 24px; align-items: center; flex-wrap: wrap; background: #fff;
         border-radius: 8px; padding: 16px 20px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  .label { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: #5b6b7c; }
  .value { font-size: 16px; font-family: "DejaVu Sans Mono", monospace; }
  #state { display: inline-block; padding: 4px 12px; border-radius: 999px; font-weight: 600;
           font-family: inherit; color: #fff; background: #8a96a3; }
  #state[data-state="open"] { background: #1f8a4c; }
  #state[data-state="connecting"], #state[data-state="reconnecting"] { background: #c77d0a; }
  #state[data-state="closed"] { background: #b3261e; }
  button { margin-left: auto; font-size: 15px; padding: 10px 18px; border: 0; border-radius: 6px;
           background: #2266cc; color: #fff; cursor: pointer; }
  button:hover { background: #1b55ab; }
  h2 { font-size: 17px; margin: 28px 0 10px; }
  table { width: 100%; border-collapse: collapse; background: #fff; border-radius: 8px;
          overflow: hidden; box-shadow: 0 1px 3px rgba(0,0,0,.12); font-size: 14px; }
  th, td { text-align: left; padding: 9px 12px; border-bottom: 1px solid #e6eaef; }
  th { background: #eef2f6; font-weight: 600; color: #3a4a5b; }
  td.mono { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; }
  tr.fresh { animation: flash 1.5s ease-out; }
  @keyframes flash { from { background: #fff6c2; } to { background: #fff; } }
  #empty td { color: #6b7785; font-style: italic; }
  #log { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; color: #4a5866;
         background: #fff; border-radius: 8px; padding: 10px 14px; max-height: 150px; overflow: auto;
         box-shadow: 0 1px 3px rgba(0,0,0,.12); margin: 0; white-space: pre-wrap; }
</style>
</head>
<body>
<header>
  <h1>Appointment notifications: live demo</h1>
  <p>Development only. Patient <b id="patient">pt_demo</b>: this page receives that patient's
     events in real time through <code>/v1/client.js</code>.</p>
</header>
<main>
  <div class="bar">
    <div><div class="label">Connection</div><span id="state" data-state="idle">idle</span></div>
    <div><div class="label">Transport</div><div class="value" id="transport">EventSource</div></div>
    <div><div class="label">Events received</div><div class="value" id="count">0</div></div>
    <div><div class="label">Resume point (last id)</div><div class="value" id="last-id">none</div></div>
    <div><div class="label">This tab</div><div class="value" id="role">starting</div></div>
    <button id="publish" type="button">Publish a sample event</button>
  </div>
  <h2>Events, newest first</h2>
  <table>
    <thead><tr><th>Received</th><th>Event id</th><th>Type</th><th>Appointment</th><th>Starts</th></tr></thead>
    <tbody id="events"><tr id="empty"><td colspan="5">No event yet: press "Publish a sample event".</td></tr></tbody>
  </table>
  <h2>Connection log</h2>
  <pre id="log"></pre>
</main>
<script type="module">
import { NotifyClient } from "/v1/client.js";

const $ = (id) => document.getElementById(id);
const log = (line) => {
  const time = new Date().toLocaleTimeString();
  $("log").textContent = `${time}  ${line}\\n` + $("log").textContent;
};
window.demo = { events: [], states: [], roles: [], gaps: 0 };
const ROLES = {
  leader: "leads: holds the stream for all tabs",
  follower: "follows: events come from the leading tab",
  solo: "connects on its own",
};

async function getToken() {
  const response = await fetch("/demo/token", { method: "POST" });
  if (!response.ok) throw new Error(`demo token: HTTP ${response.status}`);
  return (await response.json()).token;
}

function showEvent(event) {
  window.demo.events.push(event);
  $("empty")?.remove();
  const row = document.createElement("tr");
  row.className = "fresh";
  row.dataset.id = event.id ?? "";
  const starts = event.data?.starts_at ? new Date(event.data.starts_at).toLocaleString() : "";
  for (const [text, mono] of [
    [new Date().toLocaleTimeString(), false],
    [event.id ?? "(no id)", true],
    [event.type.replace("appointment.", ""), false],
    [event.appointment_id, true],
    [starts, false],
  ]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (mono) cell.className = "mono";
    row.append(cell);
  }
  $("events").prepend(row);
  $("count").textContent = String(window.demo.events.length);
}

const client = new NotifyClient({
  baseUrl: location.origin,
  getToken,
  transport: new URLSearchParams(location.search).get("transport") === "websocket" ? "websocket" : "sse",
  onEvent: (event) => {
    showEvent(event);
    $("last-id").textContent = client.lastEventId ?? "none";
  },
  onGap: (gap) => {
    window.demo.gaps += 1;
    log(`gap: history was trimmed (oldest kept: ${gap.oldest_id}); an app would refetch now`);
  },
  onStateChange: (state) => {
    window.demo.states.push(state);
    $("state").textContent = state;
    $("state").dataset.state = state;
    $("last-id").textContent = client.lastEventId ?? "none";
    log(`connection ${state}`);
  },
  onResumePoint: (id) => {
    $("last-id").textContent = id;
  },
  onRoleChange: (role) => {
    window.demo.roles.push(role);
    $("role").textContent = ROLES[role];
    $("role").dataset.role = role;
    log(`this tab ${ROLES[role]}`);
  },
  onClosed: (reason) => log(`closed by the server: ${reason} (no reconnect)`),
  onError: (error) => log(`error: ${error.message}`),
});
$("transport").textContent = client.options.transport === "websocket" ? "WebSocket" : "EventSource";
window.demo.client = client;
client.start();

$("publish").addEventListener("click", async () => {
  const response = await fetch("/demo/events", { method: "POST" });
  if (!response.ok) log(`publish failed: HTTP ${response.status}`);
  else log(`published ${(await response.json()).id}`);
});
</script>
</body>
</html>
"""
