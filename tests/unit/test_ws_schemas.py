"""The WebSocket message models: the discriminated unions, their limits, and the
pre-encoded frames the hub shares between connections."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from notify_publisher.events import EventStored
from pydantic import ValidationError

from service.fanout.queue import Delivery
from service.schemas.commands import CommandRecord
from service.schemas.ws import (
    CLIENT_MESSAGE,
    CLIENT_MODELS,
    CLIENT_TYPES,
    SERVER_MESSAGE,
    SERVER_MODELS,
    AuthMessage,
    CommandAction,
    CommandMessage,
    ErrorCode,
    ErrorMessage,
    EventMessage,
    EventsMessage,
    GapMessage,
    PongMessage,
    SubscribeMessage,
    TokenExpiringMessage,
)
from service.wire.ws import delivery_text, delivery_texts, message_text

EVENT: dict[str, Any] = {
    "id": "1700000000000-0",
    "type": "appointment.cancelled",
    "patient_id": "pt_1",
    "appointment_id": "ap_1",
    "occurred_at": "2026-11-27T09:30:00Z",
    "data": {"status": "cancelled", "room": "unknown fields pass through"},
}


@pytest.mark.parametrize(
    ("frame", "model"),
    [
        ({"type": "auth", "token": "a.b.c"}, AuthMessage),
        ({"type": "subscribe"}, SubscribeMessage),
        (
            {"type": "subscribe", "appointment_id": "ap_1", "since": "1700000000000-0"},
            SubscribeMessage,
        ),
        ({"type": "command", "action": "cancel", "appointment_id": "ap_1"}, CommandMessage),
    ],
)
def test_client_frames_parse_to_their_model(frame: dict[str, Any], model: type) -> None:
    assert isinstance(CLIENT_MESSAGE.validate_json(json.dumps(frame)), model)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "subscribe", "appointment_id": "has space"},
        {"type": "subscribe", "patient_id": "pt@example.com"},
        {"type": "subscribe", "since": "yesterday"},
        {"type": "ack"},
        {"type": "ack", "event_id": "1-x"},
        {"type": "auth"},
        {"type": "auth", "token": ""},
        {"type": "auth", "token": "x" * 8193},
        {"type": "command", "action": "delete", "appointment_id": "ap_1"},
        {"type": "command", "action": "cancel"},
        {
            "type": "command",
            "action": "cancel",
            "appointment_id": "ap_1",
            "preferred_starts_at": "2026-12-01T10:00:00Z",
        },
        {
            "type": "command",
            "action": "request_reschedule",
            "appointment_id": "ap_1",
            "preferred_starts_at": "2026-12-01T10:00:00",
        },
        {
            "type": "command",
            "action": "request_reschedule",
            "appointment_id": "ap_1",
            "preferred_starts_at": 0,
        },
        {"type": "command", "action": "cancel", "appointment_id": 1},
        {"type": "subscribe", "since": 1},
        {"type": "ping", "id": "has space"},
        {"type": "unsubscribe", "subscription_id": "x1"},
        {"type": "nope"},
        {"id": "1"},
    ],
)
def test_invalid_client_frames_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CLIENT_MESSAGE.validate_json(json.dumps(frame))


def test_identity_claims_on_a_command_are_ignored() -> None:
    command = CLIENT_MESSAGE.validate_json(
        json.dumps(
            {
                "type": "command",
                "action": "confirm",
                "appointment_id": "ap_1",
                "sub": "pt_evil",
                "patient_id": "pt_evil",
            }
        )
    )
    assert isinstance(command, CommandMessage)
    assert "sub" not in command.model_dump()
    assert "patient_id" not in command.model_dump()


def test_client_types_match_the_union() -> None:
    names = {get_args(model.model_fields["type"].annotation)[0] for model in CLIENT_MODELS}
    assert names == CLIENT_TYPES


def test_live_event_frame_matches_the_event_message_model() -> None:
    """`delivery_text` is built by string concatenation for speed: it must still be
    exactly what `EventMessage` describes."""
    stored = EventStored.model_validate(EVENT)
    frame = delivery_text(Delivery.from_event(stored))
    parsed = SERVER_MESSAGE.validate_json(frame)
    assert isinstance(parsed, EventMessage)
    assert parsed.event == stored
    assert json.loads(frame) == json.loads(message_text(EventMessage(event=stored)))


def test_hub_gap_frame_matches_the_gap_model() -> None:
    parsed = SERVER_MESSAGE.validate_json(delivery_text(Delivery.gap(None)))
    assert parsed == GapMessage(oldest_id=None)
    parsed = SERVER_MESSAGE.validate_json(delivery_text(Delivery.gap("1700000000000-0")))
    assert isinstance(parsed, GapMessage)
    assert parsed.oldest_id == "1700000000000-0"


def test_server_messages_round_trip() -> None:
    for message in (
        PongMessage(reply_to="p1"),
        ErrorMessage(code=ErrorCode.NOT_FOUND, message="not found"),
        TokenExpiringMessage(expires_at=1_800_000_000),
    ):
        encoded = message_text(message)
        assert json.loads(encoded)["type"] == message.type
        assert SERVER_MESSAGE.validate_json(encoded) == message
    # Absent optional fields are left out, not sent as null.
    assert message_text(PongMessage()) == '{"type":"pong"}'


def test_every_server_model_is_in_the_union() -> None:
    names = {model.model_fields["type"].default for model in SERVER_MODELS}
    assert len(names) == len(SERVER_MODELS)


def test_command_record_round_trips_through_stream_fields() -> None:
    record = CommandRecord(
        action=CommandAction.REQUEST_RESCHEDULE,
        appointment_id="ap_1",
        patient_id="pt_1",
        sub="pt_1",
        role="patient",
        jti="j1",
        client_ref="c-1",
        preferred_starts_at=datetime(2026, 12, 1, 10, tzinfo=UTC),
        requested_at=datetime(2026, 11, 27, 9, tzinfo=UTC),
    )
    fields = record.to_fields()
    assert fields["v"] == "1"
    assert fields["action"] == "request_reschedule"
    assert all(isinstance(v, str) for v in fields.values())
    wire = {k.encode(): v.encode() for k, v in fields.items()}
    assert CommandRecord.from_fields(wire) == record
    minimal = CommandRecord(
        action=CommandAction.CONFIRM,
        appointment_id="ap_1",
        patient_id="pt_1",
        sub="pt_1",
        role="patient",
        requested_at=datetime(2026, 11, 27, 9, tzinfo=UTC),
    ).to_fields()
    assert "jti" not in minimal
    assert "preferred_starts_at" not in minimal


def test_queued_events_are_batched_in_order_around_control_notices() -> None:
    """Several queued events travel as one `events` frame, encoded from the shared
    per-channel payloads; a control notice keeps its place between them."""
    events = [
        Delivery.from_event(EventStored.model_validate({**EVENT, "id": f"1700000000000-{i}"}))
        for i in range(5)
    ]
    gap = Delivery.gap("1700000000000-0")
    frames = delivery_texts([events[0], events[1], gap, events[2], events[3], events[4]])
    parsed = [SERVER_MESSAGE.validate_json(frame) for frame in frames]
    assert [type(p) for p in parsed] == [EventsMessage, GapMessage, EventsMessage]
    first, _, last = parsed
    assert isinstance(first, EventsMessage)
    assert isinstance(last, EventsMessage)
    assert [e.id for e in first.events + last.events] == [f"1700000000000-{i}" for i in range(5)]
    assert delivery_texts([events[0]]) == [delivery_text(events[0])]
    assert delivery_texts([]) == []
