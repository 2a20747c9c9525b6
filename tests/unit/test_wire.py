"""Every SSE block and WebSocket text the service sends, held to the literal bytes
clients received before framing moved into `service/wire/` (issue 23)."""

from __future__ import annotations

import json

from notify_publisher.events import EventStored

from service.fanout.queue import Delivery
from service.schemas.ws import GapMessage, PongMessage, ReconnectMessage
from service.wire.sse import (
    HEARTBEAT,
    HEARTBEAT_CHUNK,
    LAST_CHUNK,
    chunk,
    event_block,
    event_chunk,
    id_block,
    json_block,
    retry_block,
)
from service.wire.ws import delivery_text, delivery_texts, event_text, message_text

EVENT_JSON = (
    '{"type":"appointment.rescheduled","patient_id":"pt_1","appointment_id":"ap_1",'
    '"occurred_at":"2026-11-27T09:00:00Z","data":{"status":"confirmed"},'
    '"id":"1700000000000-0","published_at":"2026-11-27T09:00:01Z"}'
)


def stored(event_id: str = "1700000000000-0") -> EventStored:
    return EventStored.model_validate({**json.loads(EVENT_JSON), "id": event_id})


def test_sse_event_block() -> None:
    assert event_block(Delivery.from_event(stored())) == (
        b"id: 1700000000000-0\nevent: appointment.rescheduled\ndata: "
        + EVENT_JSON.encode()
        + b"\n\n"
    )


def test_sse_notices_from_the_hub() -> None:
    assert event_block(Delivery.gap("1700000000000-0")) == (
        b'event: gap\ndata: {"oldest_id": "1700000000000-0"}\n\n'
    )
    notice = Delivery(kind="token_expiring", payload=json.dumps({"expires_at": 1800000000}))
    assert event_block(notice) == b'event: token_expiring\ndata: {"expires_at": 1800000000}\n\n'


def test_sse_blocks_of_the_stream_itself() -> None:
    assert HEARTBEAT == b": keep-alive\n\n"
    assert retry_block(3141) == b"retry: 3141\n\n"
    assert retry_block(3141) + id_block("0-0") == b"retry: 3141\n\nid: 0-0\n\n"
    assert json_block("resume_point", {"id": "0-0"}) == (
        b'event: resume_point\ndata: {"id": "0-0"}\n\n'
    )
    assert json_block("reconnect", {"reason": "shutdown"}, 3141) == (
        b'retry: 3141\nevent: reconnect\ndata: {"reason": "shutdown"}\n\n'
    )
    assert json_block("closed", {"reason": "revoked"}) == (
        b'event: closed\ndata: {"reason": "revoked"}\n\n'
    )
    assert json_block("gap", {"oldest_id": None}) == b'event: gap\ndata: {"oldest_id": null}\n\n'


def test_an_sse_block_is_framed_once_per_delivery() -> None:
    delivery = Delivery.from_event(stored())
    assert event_block(delivery) is event_block(delivery)


def test_chunked_framing_of_a_handed_over_stream() -> None:
    """A stream that owns its socket writes chunks (`Transfer-Encoding: chunked`):
    the length in hex, the bytes, CRLF; a delivery's chunk is built once, for every
    stream of its channel."""
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert HEARTBEAT_CHUNK == b"e\r\n: keep-alive\n\n\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    delivery = Delivery.from_event(stored())
    assert event_chunk(delivery) == chunk(event_block(delivery))
    assert event_chunk(delivery) is event_chunk(delivery)


def test_no_value_can_inject_an_sse_field() -> None:
    """ServerSentEvent strips line breaks from `id:`/`event:` and splits data."""
    hostile = Delivery(kind="x\nevent: y", payload='{"a":1}\nid: 9')
    assert event_block(hostile) == b'event: xevent: y\ndata: {"a":1}\ndata: id: 9\n\n'
    assert id_block("1-0\nretry: 1") == b"id: 1-0retry: 1\n\n"


def test_ws_event_texts() -> None:
    event = Delivery.from_event(stored())
    assert delivery_text(event) == '{"type":"event","event":' + EVENT_JSON + "}"
    assert event_text(stored().model_dump_json(exclude_none=True)) == delivery_text(event)
    second = Delivery.from_event(stored("1700000000000-1"))
    gap = Delivery.gap("1700000000000-0")
    assert delivery_texts([event, second, gap]) == [
        '{"type":"events","events":['
        + EVENT_JSON
        + ","
        + EVENT_JSON.replace("1700000000000-0", "1700000000000-1")
        + "]}",
        '{"type":"gap","oldest_id": "1700000000000-0"}',
    ]


def test_ws_messages_from_models() -> None:
    assert message_text(PongMessage(reply_to="p1")) == '{"reply_to":"p1","type":"pong"}'
    assert message_text(GapMessage(oldest_id=None, subscription_id="s1")) == (
        '{"type":"gap","subscription_id":"s1"}'
    )
    assert message_text(ReconnectMessage(reason="shutdown", retry_ms=3141)) == (
        '{"type":"reconnect","reason":"shutdown","retry_ms":3141}'
    )
