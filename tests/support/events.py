"""Event builders shared by the tests: `event()` is the one to use."""

from __future__ import annotations

import json
from typing import Any


def event_dict(
    patient_id: str = "pt_1",
    appointment_id: str = "ap_1",
    *,
    type_: str = "appointment.rescheduled",
    starts_at: object = "2026-12-01T14:00:00Z",
    ends_at: object = "2026-12-01T14:30:00Z",
    **data: Any,
) -> dict[str, Any]:
    return {
        "type": type_,
        "patient_id": patient_id,
        "appointment_id": appointment_id,
        "occurred_at": "2026-11-27T09:30:00Z",
        "data": {"status": "scheduled", "starts_at": starts_at, "ends_at": ends_at, **data},
    }


def event_json(patient_id: str = "pt_1", appointment_id: str = "ap_1", **data: Any) -> str:
    return json.dumps(event_dict(patient_id, appointment_id, **data))


def event(patient_id: str = "pt_1", appointment_id: str = "ap_1", **data: Any) -> dict[str, Any]:
    """A valid `appointment.rescheduled` event; `data` fields are added to its data."""
    return event_dict(patient_id, appointment_id, **data)
