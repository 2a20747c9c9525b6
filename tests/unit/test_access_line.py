"""The access line a handed-over stream writes at its end (`service/middleware.py:
AccessLine`): the same fields as any request's, from strings shared by every
stream of a route (issue 23: a stream keeps its line for hours)."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from service.middleware import AccessLine


def scope() -> dict[str, object]:
    # New string objects, as uvicorn decodes them for every request.
    return {"method": "".join(["G", "ET"]), "path": "".join(["/v1/patients/", "me/events"])}


def test_streams_of_one_route_share_the_method_and_path_strings() -> None:
    first = AccessLine(scope(), request_id="a", started=time.perf_counter(), status=200)
    second = AccessLine(scope(), request_id="b", started=time.perf_counter(), status=200)
    assert first.path == "/v1/patients/me/events"
    assert first.path is second.path
    assert first.method == "GET"
    assert first.method is second.method


def test_the_line_is_its_own_end_callback_and_logs_the_same_fields() -> None:
    line = AccessLine(scope(), request_id="r1", started=time.perf_counter(), status=200)
    with capture_logs() as logs:
        line()
        line.log()
    assert len(logs) == 2
    for entry in logs:
        entry.pop("duration_ms")
    assert logs[0] == logs[1]
    assert logs[0] == {
        "event": "request",
        "log_level": "info",
        "method": "GET",
        "path": "/v1/patients/me/events",
        "route": None,
        "status": 200,
    }
