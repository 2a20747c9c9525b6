"""Redis key names and the security boundary: which stream a principal may open.

`resolve_stream_scope` is the only place that decides whose events a connection
receives; it is unit-tested for every role and claim combination.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.services.errors import ForbiddenError, PatientNotFoundError
from service.services.principal import Principal, Role


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Every Redis key and channel the service uses, under one prefix.

    The patient id is a hash tag (literal braces) in both per-patient names, in
    every Redis mode: a patient's live channel and history stream then share one
    Cluster slot, so the publish script (XADD + EXPIRE + SPUBLISH) runs on one
    shard, and one key scheme serves standalone, Sentinel and Cluster alike (a
    deployment can move between them). Patient ids never contain braces
    (`OPAQUE_ID_PATTERN`)."""

    prefix: str

    def patient_channel(self, patient_id: str) -> str:
        return f"{self.prefix}patient:{{{patient_id}}}"

    def history(self, patient_id: str) -> str:
        return f"{self.prefix}history:{{{patient_id}}}"

    @property
    def control(self) -> str:
        return f"{self.prefix}control"

    @property
    def commands(self) -> str:
        return f"{self.prefix}commands"

    def ticket(self, ticket: str) -> str:
        return f"{self.prefix}ticket:{ticket}"

    def revoked_jti(self, jti: str) -> str:
        return f"{self.prefix}revoked:jti:{jti}"

    def revoked_sub(self, sub: str) -> str:
        return f"{self.prefix}revoked:sub:{sub}"

    def patient_from_channel(self, channel: str) -> str | None:
        head = f"{self.prefix}patient:{{"
        if channel.startswith(head) and channel.endswith("}"):
            return channel[len(head) : -1] or None
        return None


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
