"""`service/transports/writes.py`: the streams woken in one loop iteration are
written by one callback at its end, which reads the clock once and counts the
deliveries once, exactly, whatever each stream wrote."""

from __future__ import annotations

import asyncio

from service.transports.writes import Writes


class Tally:
    def __init__(self) -> None:
        self.incs: list[float] = []

    def inc(self, amount: float = 1) -> None:
        self.incs.append(amount)


class Stream:
    def __init__(self, writes: Writes, delivered: int, *, fails: bool = False) -> None:
        self.writes = writes
        self.delivered = delivered
        self.fails = fails
        self.seen: list[float] = []
        self.wake_next: Stream | None = None

    def write_due(self, now: float) -> int:
        self.seen.append(now)
        if self.wake_next is not None:
            # Woken during the flush (a stream's end wakes another): next flush.
            self.writes.add(self.wake_next)
            self.wake_next = None
        if self.fails:
            raise RuntimeError("boom")
        return self.delivered


async def flushed() -> None:
    """One loop iteration: the flush scheduled by `add` has run."""
    await asyncio.sleep(0)


async def test_one_flush_per_iteration_one_clock_reading_one_count() -> None:
    tally = Tally()
    writes = Writes(tally)
    streams = [Stream(writes, n) for n in (1, 0, 3, 1)]
    for stream in streams:
        writes.add(stream)
    assert all(not s.seen for s in streams)  # at the end of the iteration, not at once
    await flushed()
    assert [len(s.seen) for s in streams] == [1, 1, 1, 1]
    assert len({s.seen[0] for s in streams}) == 1  # the clock read once for all
    assert tally.incs == [5]  # one count for the whole flush


async def test_nothing_written_counts_nothing() -> None:
    tally = Tally()
    writes = Writes(tally)
    writes.add(Stream(writes, 0))
    await flushed()
    assert tally.incs == []


async def test_a_stream_woken_during_a_flush_is_written_by_the_next_one() -> None:
    tally = Tally()
    writes = Writes(tally)
    first, later = Stream(writes, 1), Stream(writes, 2)
    first.wake_next = later
    writes.add(first)
    await flushed()
    assert later.seen == []
    assert tally.incs == [1]
    await flushed()
    assert len(later.seen) == 1
    assert later.seen[0] >= first.seen[0]
    assert tally.incs == [1, 2]


async def test_what_was_written_before_an_escaping_error_is_still_counted() -> None:
    tally = Tally()
    writes = Writes(tally)
    loop = asyncio.get_running_loop()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    writes.add(Stream(writes, 2))
    writes.add(Stream(writes, 1, fails=True))
    await flushed()
    assert tally.incs == [2]
    assert [type(e) for e in errors] == [RuntimeError]
