"""The security boundary: which stream each principal may open."""

from __future__ import annotations

import pytest
from notify_publisher.keys import RedisKeys

from service.services.channels import StreamScope, resolve_stream_scope
from service.services.errors import ForbiddenError, PatientNotFoundError
from service.services.principal import Principal, Role


def who(role: Role, sub: str = "pt_1") -> Principal:
    return Principal(sub=sub, role=role)


@pytest.mark.parametrize(
    ("principal", "patient_id", "appointment_id", "expected"),
    [
        (who(Role.PATIENT), None, None, StreamScope("pt_1")),
        (who(Role.PATIENT), None, "ap_9", StreamScope("pt_1", "ap_9")),
        (who(Role.PATIENT), "pt_1", None, StreamScope("pt_1")),
        (who(Role.STAFF, "st_1"), "pt_7", None, StreamScope("pt_7")),
        (who(Role.STAFF, "st_1"), "pt_7", "ap_2", StreamScope("pt_7", "ap_2")),
    ],
)
def test_allowed_scopes(
    principal: Principal, patient_id: str | None, appointment_id: str | None, expected: StreamScope
) -> None:
    assert (
        resolve_stream_scope(principal, patient_id=patient_id, appointment_id=appointment_id)
        == expected
    )


@pytest.mark.parametrize(
    ("principal", "patient_id", "error"),
    [
        # Another patient's id: indistinguishable from a patient that does not exist.
        (who(Role.PATIENT), "pt_2", PatientNotFoundError),
        (who(Role.SERVICE, "svc_1"), "pt_1", PatientNotFoundError),
        (who(Role.ADMIN, "adm_1"), "pt_1", PatientNotFoundError),
        # `/me` for principals that are not patients.
        (who(Role.STAFF, "st_1"), None, ForbiddenError),
        (who(Role.SERVICE, "svc_1"), None, ForbiddenError),
        (who(Role.ADMIN, "adm_1"), None, ForbiddenError),
    ],
)
def test_refused_scopes(
    principal: Principal, patient_id: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        resolve_stream_scope(principal, patient_id=patient_id)


def test_identity_comes_from_sub_only() -> None:
    scope = resolve_stream_scope(who(Role.PATIENT, "pt_me"), patient_id=None)
    assert scope.patient_id == "pt_me"


def test_keys_share_prefix() -> None:
    keys = RedisKeys("x:")
    assert keys.patient_channel("pt_1") == "x:patient:{pt_1}"
    assert keys.history("pt_1") == "x:history:{pt_1}"
    assert keys.patient_from_channel("x:patient:{pt_1}") == "pt_1"
    assert keys.patient_from_channel("y:patient:{pt_1}") is None
    assert keys.patient_from_channel("x:patient:pt_1") is None


def test_a_patients_channel_and_history_share_one_cluster_slot() -> None:
    """The hash tag puts both in one slot: the publish script's XADD and SPUBLISH
    then run on one shard (a cross-slot script is refused in Cluster)."""
    from redis.crc import key_slot

    keys = RedisKeys("notify:")
    for patient in ("pt_1", "pt_8f3a", "p"):
        channel, history = keys.patient_channel(patient), keys.history(patient)
        assert key_slot(channel.encode()) == key_slot(history.encode())
        assert key_slot(channel.encode()) == key_slot(patient.encode())
