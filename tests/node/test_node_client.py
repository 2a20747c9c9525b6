"""The packed client under Node 20, installed from its tarball into a scratch project
(CommonJS and ES module), against a running `notify serve`: events, the resume point,
a gap, a resume across a restart, over the `eventsource` package and over a
WebSocket; without an implementation, `onError` and no crash."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.node.conftest import HISTORY_MAXLEN, NodeClient, Project, Service, new_patient
from tests.support.tokens import Tokens

pytestmark = pytest.mark.slow

IMPORTS = {
    "cjs": (
        'const { NotifyClient } = require("@appointment-notify/client");\n'
        'const { EventSource } = require("eventsource");\n'
    ),
    "mjs": (
        'import { NotifyClient } from "@appointment-notify/client";\n'
        'import { EventSource } from "eventsource";\n'
    ),
}

# Every callback is one JSON line; stdin lines are commands, its end closes the client.
BODY = """
const config = JSON.parse(process.argv[2]);
const out = (kind, fields = {}) => process.stdout.write(JSON.stringify({ kind, ...fields }) + "\\n");
const options = {
  baseUrl: config.baseUrl,
  transport: config.transport,
  lastEventId: config.lastEventId,
  initialBackoffMs: 100,
  maxBackoffMs: 1000,
  getToken: () => config.token,
  onEvent: (event) => out("event", { id: event.id, type: event.type }),
  onGap: (gap) => out("gap", gap),
  onStateChange: (state) => out("state", { state }),
  onResumePoint: (id) => out("resume_point", { id }),
  onRoleChange: (role) => out("role", { role }),
  onClosed: (reason) => out("closed", { reason }),
  onError: (error) => out("error", { message: String(error.message) }),
};
if (config.eventsource) options.EventSource = EventSource;
const client = new NotifyClient(options);
client.start();
let rest = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  const lines = (rest + chunk).split("\\n");
  rest = lines.pop();
  for (const line of lines) {
    client.command("confirm", line).then(
      (reply) => out("reply", { type: reply.type, command_id: reply.command_id }),
      (error) => out("refused", { message: String(error.message) }),
    );
  }
});
process.stdin.on("end", () => {
  client.close();
  out("done", { lastEventId: client.lastEventId, state: client.state });
});
"""


def run_client(
    project: Project,
    service: Service,
    patient: str,
    *,
    flavour: str,
    transport: str = "sse",
    eventsource: bool = True,
    last_event_id: str | None = None,
    node_flags: tuple[str, ...] = (),
) -> NodeClient:
    script = project.dir / f"client-{flavour}-{transport}.{flavour}"
    script.write_text(IMPORTS[flavour] + BODY)
    config: dict[str, Any] = {
        "baseUrl": service.base_url,
        "token": Tokens().patient(patient),
        "transport": transport,
        "eventsource": eventsource,
        "lastEventId": last_event_id,
    }
    return NodeClient([*node_flags, script.name, json.dumps(config)], cwd=project.dir)


def ids(client: NodeClient) -> list[str]:
    return [line["id"] for line in client.of("event")]


def finish_cleanly(client: NodeClient) -> dict[str, Any]:
    assert client.finish() == 0, client.stderr
    assert client.stderr == ""
    (done,) = client.of("done")
    assert done["state"] == "closed"
    return done


@pytest.mark.parametrize("flavour", ["cjs", "mjs"])
def test_eventsource_package_events_resume_point_and_restart(
    project: Project, service: Service, flavour: str
) -> None:
    patient = new_patient()
    before = service.publish(patient, "ap_0")
    client = run_client(project, service, patient, flavour=flavour)
    # The server's resume point as soon as the stream opens: the history head.
    client.wait(
        "the resume point", lambda: [r["id"] for r in client.of("resume_point")] == [before]
    )
    client.wait(
        "open", lambda: {"state": "open"} in [{"state": s["state"]} for s in client.of("state")]
    )
    assert client.of("role") == [{"kind": "role", "role": "solo"}]  # no Web Locks in Node
    live = [service.publish(patient, f"ap_{n}") for n in (1, 2)]
    client.wait_kind("event", 2)
    service.restart()
    missed = service.publish(patient, "ap_3")
    client.wait_kind("event", 3)
    assert ids(client) == [*live, missed], "nothing lost, nothing twice"
    done = finish_cleanly(client)
    assert done["lastEventId"] == missed
    assert client.of("error") == []


@pytest.mark.parametrize("flavour", ["cjs", "mjs"])
def test_eventsource_package_gap(project: Project, service: Service, flavour: str) -> None:
    patient = new_patient()
    first = service.publish(patient, "ap_0")
    rest = [service.publish(patient, f"ap_{n}") for n in range(1, HISTORY_MAXLEN + 3)]
    client = run_client(project, service, patient, flavour=flavour, last_event_id=first)
    client.wait_kind("event", HISTORY_MAXLEN)
    assert client.of("gap") == [{"kind": "gap", "oldest_id": rest[-HISTORY_MAXLEN]}]
    assert ids(client) == rest[-HISTORY_MAXLEN:]
    finish_cleanly(client)


def test_websocket_events_command_gap_and_restart(project: Project, service: Service) -> None:
    """Node 20's WebSocket (behind --experimental-websocket; global in Node 22)."""
    patient = new_patient()
    first = service.publish(patient, "ap_0")
    rest = [service.publish(patient, f"ap_{n}") for n in range(1, HISTORY_MAXLEN + 3)]
    client = run_client(
        project,
        service,
        patient,
        flavour="mjs",
        transport="websocket",
        eventsource=False,
        last_event_id=first,
        node_flags=("--experimental-websocket", "--no-warnings"),
    )
    client.wait_kind("event", HISTORY_MAXLEN)
    assert client.of("gap") == [{"kind": "gap", "oldest_id": rest[-HISTORY_MAXLEN]}]
    assert ids(client) == rest[-HISTORY_MAXLEN:]
    assert client.proc.stdin is not None
    client.proc.stdin.write(f"ap_{HISTORY_MAXLEN + 2}\n")  # an appointment still in history
    client.proc.stdin.flush()
    (reply,) = client.wait_kind("reply")
    assert reply["type"] == "command_accepted"
    assert reply["command_id"]
    service.restart()
    missed = service.publish(patient, "ap_9")
    client.wait_kind("event", HISTORY_MAXLEN + 1)
    assert ids(client) == [*rest[-HISTORY_MAXLEN:], missed]
    assert "reconnecting" in [s["state"] for s in client.of("state")]
    finish_cleanly(client)


@pytest.mark.parametrize(
    ("flavour", "transport", "flags"),
    [
        ("cjs", "sse", ()),
        ("mjs", "sse", ()),
        ("mjs", "websocket", ("--no-experimental-websocket",)),
    ],
)
def test_without_an_implementation_on_error_not_a_crash(
    project: Project, service: Service, flavour: str, transport: str, flags: tuple[str, ...]
) -> None:
    client = run_client(
        project,
        service,
        new_patient(),
        flavour=flavour,
        transport=transport,
        eventsource=False,
        node_flags=flags,
    )
    (error,) = client.wait_kind("error")
    name = "WebSocket" if transport == "websocket" else "EventSource"
    assert error["message"].startswith(f"no {name} implementation")
    client.wait_kind("closed")
    assert client.of("closed")[0]["reason"] == "unsupported"
    finish_cleanly(client)


def test_websocket_resume_point_at_subscribe(project: Project, service: Service) -> None:
    """A fresh client's `lastEventId` is the history head from `subscribed`, before
    any event."""
    patient = new_patient()
    head = service.publish(patient, "ap_0")
    client = run_client(
        project,
        service,
        patient,
        flavour="cjs",
        transport="websocket",
        eventsource=False,
        node_flags=("--experimental-websocket", "--no-warnings"),
    )
    (resume,) = client.wait_kind("resume_point")
    assert resume["id"] == head
    assert client.of("event") == []
    assert finish_cleanly(client)["lastEventId"] == head
