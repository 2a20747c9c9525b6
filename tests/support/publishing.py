"""The one test publisher: the service's own publish path (`services/publisher.py`,
the same code as `POST /v1/events` and `notify publish`)."""

from __future__ import annotations

from typing import Any

from notify_publisher.events import EventCreate, EventStored
from notify_publisher.keys import RedisKeys

from service.brokers.base import Broker
from service.services.publisher import publish
from tests.support.app_server import RunningApp
from tests.support.events import event


async def publish_to(
    broker: Broker,
    keys: RedisKeys,
    patient_id: str = "pt_1",
    appointment_id: str = "ap_1",
    *,
    maxlen: int = 1000,
    ttl_s: int = 600,
    **data: Any,
) -> EventStored:
    """Publish one event for `patient_id` (history, then live) and return it stored."""
    stored = await publish(
        broker=broker,
        keys=keys,
        event=EventCreate.model_validate(event(patient_id, appointment_id, **data)),
        history_maxlen=maxlen,
        history_ttl_s=ttl_s,
    )
    assert stored.event.id is not None
    return stored.event


async def publish_one(
    app: RunningApp, patient_id: str = "pt_1", appointment_id: str = "ap_1", **data: Any
) -> str:
    """Publish through `app`'s broker; the new event's id."""
    stored = await publish_to(
        app.state.broker,
        app.state.keys,
        patient_id,
        appointment_id,
        maxlen=app.state.settings.history_maxlen,
        ttl_s=app.state.settings.history_ttl_s,
        **data,
    )
    assert stored.id is not None
    return stored.id
