"""CORS on every response to an allowed origin, event streams included, through a
real uvicorn (the browser-level proof is tests/e2e/; this pins the headers)."""

from __future__ import annotations

import httpx
from notify_publisher.events import MAX_EVENT_BYTES

from tests.conftest import SettingsFactory, Tokens, bearer
from tests.support.app_server import run_app
from tests.support.sse import open_sse, opened

APP_ORIGIN = "http://app.clinic.test:8080"
OTHER_ORIGIN = "http://evil.test"
ME = "/v1/patients/me/events"


def allowed(response: httpx.Response) -> bool:
    return bool(response.headers.get("access-control-allow-origin") == APP_ORIGIN)


async def test_every_response_to_an_allowed_origin_carries_cors_headers(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    settings = make_settings(cors_origins=[APP_ORIGIN], max_connections_per_subject=1)
    origin = {"Origin": APP_ORIGIN}
    async with (
        run_app(settings) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
    ):
        ticket = await http.post(
            "/v1/stream-tickets", headers={**origin, **bearer(tokens.patient("pt_cors"))}
        )
        assert ticket.status_code == 201
        assert allowed(ticket)
        url = f"{ME}?ticket={ticket.json()['ticket']}"
        async with open_sse(http, url, headers=origin) as stream:
            await opened(stream)
            # The stream itself: what a cross-origin EventSource needs.
            assert allowed(stream.response)
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            # The retry-able refusal (over the per-subject limit) too.
            async with open_sse(http, url, headers=origin) as refused:
                await refused.wait_ended()
                assert refused.response.status_code == 200
                assert [f.event for f in refused.events] == ["reconnect"]
                assert allowed(refused.response)
        unauthorised = await http.get(f"{ME}?ticket=nope", headers=origin)
        assert unauthorised.status_code == 401
        assert allowed(unauthorised)
        too_large = await http.post(
            "/v1/events",
            content=b"x" * (MAX_EVENT_BYTES + 1),
            headers={**origin, **bearer(tokens.service()), "Content-Type": "application/json"},
        )
        assert too_large.status_code == 413
        assert allowed(too_large)
        # EventSource sends Last-Event-ID on reconnects; fetch-based clients ask first.
        preflight = await http.options(
            ME,
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "last-event-id, authorization",
            },
        )
        assert preflight.status_code == 200
        assert allowed(preflight)
        assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()


async def test_other_origins_get_no_cors_headers(
    make_settings: SettingsFactory, tokens: Tokens
) -> None:
    async with (
        run_app(make_settings(cors_origins=[APP_ORIGIN])) as app,
        httpx.AsyncClient(base_url=app.base_url, timeout=10) as http,
        open_sse(
            http, ME, headers={"Origin": OTHER_ORIGIN, **bearer(tokens.patient("pt_cors"))}
        ) as stream,
    ):
        await opened(stream)
        assert "access-control-allow-origin" not in stream.response.headers
        preflight = await http.options(
            ME, headers={"Origin": OTHER_ORIGIN, "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
