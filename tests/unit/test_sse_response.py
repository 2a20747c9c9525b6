"""`SseStreamResponse` takes sse-starlette's attributes from one response built by
the library per header set, instead of building them per stream (issue 23). This
holds the two equal, so that a library upgrade that changes its `__init__` fails
here, not in production."""

from __future__ import annotations

from typing import Any, cast

from sse_starlette import EventSourceResponse

from service.fanout.clock import Clock, SendWatch
from service.transports import sse_response
from service.transports.sse import SSE_HEADERS
from service.transports.sse_response import SseStreamResponse, _nothing
from service.transports.sse_stream import SseStream

# Ours alone: the stream, the clock, the clock's watch (`SendWatch`).
OURS = {"_sse", "_clock", "send_started", "task", "aborted"}
# The library's that this response does not keep, or keeps per stream.
PER_STREAM = {"_send_lock", "body_iterator"}


def ours(headers: dict[str, str] = SSE_HEADERS) -> SseStreamResponse:
    return SseStreamResponse(
        cast(SseStream, object()), headers=headers, clock=cast(Clock, object())
    )


def library(headers: dict[str, str] = SSE_HEADERS) -> EventSourceResponse:
    return EventSourceResponse(_nothing(), headers=headers, ping=0, sep="\n")


def attributes(response: object, leave_out: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(response).items() if k not in leave_out}


def test_it_holds_what_the_library_would_set_but_the_lock() -> None:
    response = ours()
    assert attributes(response, OURS | PER_STREAM) == attributes(library(), PER_STREAM)
    assert set(vars(response)) == (set(vars(library())) - {"_send_lock"}) | OURS
    assert response.ping_interval == 0
    assert (b"cache-control", b"no-cache") in response.raw_headers
    assert (b"x-accel-buffering", b"no") in response.raw_headers
    assert isinstance(response, SendWatch)


def test_each_response_has_its_own_header_list_and_body() -> None:
    first, second = ours(), ours()
    assert first.raw_headers == second.raw_headers
    assert first.raw_headers is not second.raw_headers
    first.raw_headers.append((b"x-request-id", b"r1"))
    assert (b"x-request-id", b"r1") not in ours().raw_headers
    assert first.body_iterator is not second.body_iterator


# What two responses may share: values nothing can change in place.
IMMUTABLE = (str, bytes, int, float, bool, type(None), tuple, frozenset)


def test_what_responses_share_cannot_be_changed_in_place() -> None:
    """The attributes copied from the one library-built response are shared by
    every stream: an upgrade of sse-starlette that sets a list, dict or other
    mutable per response must fail here, not be shared silently."""
    first, second = ours(), ours()
    shared = {name: value for name, value in vars(first).items() if value is vars(second).get(name)}
    assert "raw_headers" not in shared
    mutable = {
        name: type(value).__name__
        for name, value in shared.items()
        if not isinstance(value, IMMUTABLE)
    }
    assert not mutable, mutable


def test_other_headers_get_their_own_attributes() -> None:
    other = {"Cache-Control": "no-store"}
    assert attributes(ours(other), OURS | PER_STREAM) == attributes(library(other), PER_STREAM)
    assert attributes(ours(), OURS | PER_STREAM) == attributes(library(), PER_STREAM)


def test_distinct_header_sets_are_remembered_up_to_a_bound() -> None:
    """Header sets beyond the bound are built each time, never kept."""
    for i in range(3 * sse_response._LIBRARY_ATTRIBUTES_MAX):
        headers = {"Cache-Control": f"max-age={i}"}
        assert attributes(ours(headers), OURS | PER_STREAM) == attributes(
            library(headers), PER_STREAM
        )
    assert len(sse_response._LIBRARY_ATTRIBUTES) <= sse_response._LIBRARY_ATTRIBUTES_MAX
