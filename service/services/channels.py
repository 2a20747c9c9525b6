"""The security boundary: which stream a principal may open (the Redis key names
live in `notify_publisher.keys`, shared with the publisher package).

`resolve_stream_scope` is the only place that decides whose events a connection
receives; it is unit-tested for every role and claim combination.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.services.errors import ForbiddenError, PatientNotFoundError
from service.services.principal import Principal, Role


@dataclass(frozen=True, slots=True)
class StreamScope:
    """What one connection receives: a patient's events, optionally one appointment's."""

    patient_id: str
    appointment_id: str | None = None


def resolve_stream_scope(
    principal: Principal,
    *,
    patient_id: str | None = None,
    appointment_id: str | None = None,
) -> StreamScope:
    """The stream `principal` may open; `patient_id=None` means "my own" (`/me`).

    A patient's identity comes only from the token's `sub`. A patient naming any
    other patient gets "not found" (404), exactly as for a patient that does not
    exist, so ids of other patients cannot be probed. Only staff may name a
    patient; service and admin principals are not patients and have no stream.
    """
    if principal.role is Role.PATIENT:
        if patient_id is not None and patient_id != principal.sub:
            raise PatientNotFoundError()
        return StreamScope(patient_id=principal.sub, appointment_id=appointment_id)
    if principal.role is Role.STAFF and patient_id is not None:
        return StreamScope(patient_id=patient_id, appointment_id=appointment_id)
    if patient_id is not None:
        # A service or admin token asking for a patient: not theirs to read.
        raise PatientNotFoundError()
    # `/me` with a non-patient token: the caller is known, the route is not for it.
    raise ForbiddenError()
