"""Every WebSocket text message the service sends.

A live event is framed by string concatenation around the payload the hub
encoded once per channel (no re-serialisation per socket); `tests/unit/test_wire.py`
and `tests/unit/test_ws_schemas.py` hold these texts to the models of
`service/schemas/ws.py` that the AsyncAPI document describes. Every other message
is one of those models, serialised by `message_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel


class Framed(Protocol):
    """An event or notice from the hub (`Delivery`), with room to keep its text."""

    kind: str
    payload: str
    is_event: bool
    ws: str | None


def message_text(message: BaseModel) -> str:
    """A server message model as sent: absent optional fields left out."""
    return message.model_dump_json(exclude_none=True)


def event_text(payload: str) -> str:
    """`{"type":"event","event":…}` around an event's JSON."""
    return f'{{"type":"event","event":{payload}}}'


def events_text(payloads: list[str]) -> str:
    """`{"type":"events","events":[…]}`: several events in one message."""
    return '{"type":"events","events":[' + ",".join(payloads) + "]}"


def delivery_text(item: Framed) -> str:
    """The message for one hub delivery, built on first use and then shared."""
    text = item.ws
    if text is None:
        if item.is_event:
            text = event_text(item.payload)
        else:
            # A notice's payload is a JSON object: its fields follow `type`.
            text = f'{{"type":"{item.kind}",{item.payload[1:]}'
        item.ws = text
    return text


def delivery_texts(items: Sequence[Framed]) -> list[str]:
    """Messages for `items`, in order: a run of several events becomes one
    `events` message; a lone event or a notice keeps its own shared text."""
    texts: list[str] = []
    run: list[Framed] = []

    def flush_run() -> None:
        if len(run) == 1:
            texts.append(delivery_text(run[0]))
        elif run:
            texts.append(events_text([item.payload for item in run]))
        run.clear()

    for item in items:
        if item.is_event:
            run.append(item)
        else:
            flush_run()
            texts.append(delivery_text(item))
    flush_run()
    return texts
