"""Client commands, called directly (no transport): ownership, stamping, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from notify_publisher.events import EventCreate
from notify_publisher.keys import RedisKeys

from service.brokers.memory import MemoryBroker
from service.schemas.commands import CommandRecord
from service.schemas.ws import CommandAction
from service.services.commands import (
    AppointmentNotFoundError,
    Command,
    CommandRateLimiter,
    OwnedAppointments,
    submit_command,
)
from service.services.errors import ForbiddenError
from service.services.principal import Principal, Role
from service.services.publisher import publish

KEYS = RedisKeys("u:")


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker(control_channel=KEYS.control)
    await memory.start()
    yield memory
    await memory.stop()


async def _publish(broker: MemoryBroker, patient_id: str, appointment_id: str) -> None:
    await publish(
        broker=broker,
        keys=KEYS,
        event=EventCreate.model_validate(
            {
                "type": "appointment.created",
                "patient_id": patient_id,
                "appointment_id": appointment_id,
                "occurred_at": datetime.now(UTC).isoformat(),
            }
        ),
        history_maxlen=1000,
        history_ttl_s=3600,
    )


def _owned(broker: MemoryBroker, patient_id: str = "pt_1") -> OwnedAppointments:
    return OwnedAppointments(broker=broker, keys=KEYS, patient_id=patient_id, page_size=10)


async def test_ownership_comes_from_the_patients_own_history(broker: MemoryBroker) -> None:
    # Enough entries for several pages, the appointment asked about on the last one.
    for n in range(25):
        await _publish(broker, "pt_1", f"ap_{n}")
    await _publish(broker, "pt_2", "ap_other")
    owned = _owned(broker)
    assert await owned.contains("ap_24")
    assert await owned.contains("ap_0")
    assert not await owned.contains("ap_other")
    # Exact ids only: "ap_2" is a prefix of "ap_24", "ap_24" one of "ap_240".
    assert not await owned.contains("ap_240")
    assert not await owned.contains("ap")


async def test_remembered_appointments_need_no_history(broker: MemoryBroker) -> None:
    owned = _owned(broker)
    assert not await owned.contains("ap_live")
    owned.remember("ap_live")
    assert await owned.contains("ap_live")


async def test_submit_stamps_the_principal_and_refuses_others(broker: MemoryBroker) -> None:
    await _publish(broker, "pt_1", "ap_1")
    await _publish(broker, "pt_2", "ap_2")
    patient = Principal(sub="pt_1", role=Role.PATIENT, jti="j-1", expires_at=0)
    entry_id = await submit_command(
        broker=broker,
        keys=KEYS,
        principal=patient,
        command=Command(action=CommandAction.CANCEL, appointment_id="ap_1", client_ref="c1"),
        owned=_owned(broker),
        maxlen=100,
    )
    ((stored_id, fields),) = broker.stream_records[KEYS.commands]
    assert stored_id == entry_id
    record = CommandRecord.from_fields(fields)
    assert (record.sub, record.patient_id, record.jti, record.client_ref) == (
        "pt_1",
        "pt_1",
        "j-1",
        "c1",
    )
    with pytest.raises(AppointmentNotFoundError):
        await submit_command(
            broker=broker,
            keys=KEYS,
            principal=patient,
            command=Command(action=CommandAction.CANCEL, appointment_id="ap_2"),
            owned=_owned(broker),
            maxlen=100,
        )
    staff = Principal(sub="st_1", role=Role.STAFF)
    with pytest.raises(ForbiddenError):
        await submit_command(
            broker=broker,
            keys=KEYS,
            principal=staff,
            command=Command(action=CommandAction.CANCEL, appointment_id="ap_1"),
            owned=_owned(broker, "st_1"),
            maxlen=100,
        )
    assert len(broker.stream_records[KEYS.commands]) == 1


def test_rate_limiter_allows_a_burst_then_refills() -> None:
    limiter = CommandRateLimiter(burst=3, refill_per_s=1000.0)
    assert all(limiter.try_take() for _ in range(3))
    slow = CommandRateLimiter(burst=2, refill_per_s=0.0)
    assert slow.try_take()
    assert slow.try_take()
    assert not slow.try_take()
