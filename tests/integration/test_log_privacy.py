"""Nothing secret reaches the logs: a real `notify serve` process, logging at
debug level to a file, goes through a full subscribe / publish / revoke flow
(tickets in query strings and paths, tokens in headers and WebSocket frames,
payloads valid and invalid), and the file holds no token, ticket or payload text."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import ServiceProcess
from tests.support.events import event_dict
from tests.support.raw_redis import async_client, raw_publish
from tests.support.sse import open_sse
from tests.support.ws import open_ws

ME = "/v1/patients/me/events"


def secrets_of(value: str) -> list[str]:
    """A credential, each of its parts, and its first and last 16 characters (a
    truncated log line would still leak those)."""
    parts = [p for p in value.split(".") if len(p) > 12]
    return [value, value[:16], value[-16:], *parts, *(p[:16] for p in parts)]


async def test_no_token_ticket_or_payload_is_logged(
    make_settings: SettingsFactory, tokens: Tokens, tmp_path: Path
) -> None:
    settings = make_settings(log_level="debug", log_format="json")
    log_path = tmp_path / "service.log"
    proc = ServiceProcess(settings, log_path=str(log_path))
    marker = f"PAYLOAD-{uuid.uuid4().hex}"
    patient_token = tokens.patient("pt_1")
    staff_token = tokens.staff("st_1")
    admin_token = tokens.admin()
    service_token = tokens.service()
    secrets: list[str] = [marker]
    for token in (patient_token, staff_token, admin_token, service_token):
        secrets += secrets_of(token)

    await asyncio.to_thread(proc.start)
    try:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=10) as http:
            issued = await http.post("/v1/stream-tickets", headers=bearer(patient_token))
            assert issued.status_code == 201
            ticket = issued.json()["ticket"]
            staff_ticket = (
                await http.post("/v1/stream-tickets", headers=bearer(staff_token))
            ).json()["ticket"]
            secrets += [*secrets_of(ticket), *secrets_of(staff_ticket)]
            ws_url = f"{proc.base_url.replace('http://', 'ws://')}/v1/ws"

            async with (
                open_sse(http, f"{ME}?ticket={ticket}") as sse,
                open_sse(http, f"/v1/patients/pt_1/events?ticket={staff_ticket}") as staff_sse,
                open_ws(f"{ws_url}?ticket={ticket}") as ws_ticket,
                open_ws(ws_url, auth_frame=patient_token) as ws_frame,
            ):
                for stream in (sse, staff_sse):
                    await stream.wait_for(lambda s: bool(s.frames), what="stream open")
                for ws in (ws_ticket, ws_frame):
                    await ws.request({"type": "subscribe"}, "subscribed")

                # A valid event whose payload carries the marker, through the API.
                body = event_dict("pt_1", note=marker, location_id="loc_1")
                published = await http.post("/v1/events", json=body, headers=bearer(service_token))
                assert published.status_code == 201
                await sse.wait_events(1)
                await staff_sse.wait_events(1)
                await ws_ticket.wait_events(1)
                await ws_frame.wait_events(1)
                # Invalid ones: refused by the API, dropped from Redis; never echoed.
                bad = event_dict("pt_1", starts_at="2026-12-02T00:00:00Z", note=marker)
                refused = await http.post("/v1/events", json=bad, headers=bearer(service_token))
                assert refused.status_code == 400
                unknown = {**body, "type": f"appointment.{marker}"}
                refused = await http.post("/v1/events", json=unknown, headers=bearer(service_token))
                assert refused.status_code == 422
                raw = json.dumps({**body, "patient_id": "pt_1", "extra": marker})
                await raw_publish(settings, "pt_1", raw)
                redis = async_client(settings)
                try:
                    await redis.publish(f"{settings.key_prefix}control", f'{{"junk": "{marker}"}}')
                finally:
                    await redis.aclose()

                # Mistakes a client can make with credentials, each of them refused.
                leaked = tokens.patient("pt_1")
                secrets += secrets_of(leaked)
                for response in (
                    await http.get(f"{ME}?token={leaked}"),
                    await http.get(ME, headers={"Authorization": f"Bearer {leaked}x"}),
                    await http.get(f"{ME}?ticket={leaked}"),
                    await http.get(f"{ME}?access_token={leaked}"),
                ):
                    assert response.status_code == 401

                # Delete the ticket (in the path), revoke a token and a subject.
                deleted = await http.delete(
                    f"/v1/stream-tickets/{ticket}", headers=bearer(patient_token)
                )
                assert deleted.status_code == 204
                await sse.wait_ended(timeout_s=2)
                await ws_ticket.wait_closed(timeout_s=2)
                until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
                jti = jwt.decode(patient_token, options={"verify_signature": False})["jti"]
                for revocation in ({"jti": jti, "until": until}, {"sub": "st_1", "until": until}):
                    response = await http.post(
                        "/v1/revocations", json=revocation, headers=bearer(admin_token)
                    )
                    assert response.status_code == 201
                await ws_frame.wait_closed(timeout_s=2)
                await staff_sse.wait_ended(timeout_s=2)
    finally:
        await asyncio.to_thread(proc.stop)

    lines = log_path.read_text().splitlines()
    records: list[dict[str, Any]] = [json.loads(line) for line in lines if line.startswith("{")]
    events = {r.get("event") for r in records}
    # The log did capture the flow (a test that cannot fail is a bug) ...
    for expected in ("request", "stream_opened", "stream_closed", "revoked", "ticket_deleted"):
        assert expected in events, expected
    assert any(r.get("event") == "event_dropped" for r in records)
    assert any("[redacted]" in line for line in lines)
    # ... and none of it is secret.
    text = log_path.read_text()
    found = [s[:16] + "…" for s in secrets if s in text]
    assert not found, f"secrets in the log: {found}"
