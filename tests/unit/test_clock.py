"""One clock for every stream: heartbeats for idle streams, an abort for a writer
stuck in one send, and token expiry (a warning, then the close), all from one
timing wheel walked by `tick(now)`. Driven here with explicit times."""

from __future__ import annotations

import asyncio
import gc
import random
import time
import tracemalloc
import weakref
from collections.abc import Iterator

import pytest

from service.fanout.clock import COMPACT_MIN, EXPIRY_WARNING_S, TICK_S, Clock, SendWatch
from service.fanout.queue import DeliveryQueue

HEARTBEAT_S = 10.0
SEND_TIMEOUT_S = 30.0
# The wall clock (Unix time) when the monotonic clock reads 0.
EPOCH = 1_800_000_000.0


class FakeTime:
    """Both clocks the `Clock` reads, moved together by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now


class Stream:
    """A writer (watched for stalls) that takes its own heartbeats, for brevity;
    in the service the stream's queue takes them (see the heartbeat test below)."""

    def __init__(self) -> None:
        self.next_heartbeat = 0.0
        self.send_started = 0.0
        self.beats = 0
        self.aborted = False

    def heartbeat(self) -> None:
        self.beats += 1

    def abort(self) -> None:
        self.aborted = True


class Owner:
    """What a token's expiry ends: a connection (SSE or WebSocket)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def warn_expiring(self, expires_at: int) -> None:
        self.calls.append(("warn", expires_at))

    def expire(self) -> None:
        self.calls.append(("expire", None))


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def clock(fake: FakeTime) -> Clock:
    return Clock(
        heartbeat_s=HEARTBEAT_S,
        send_timeout_s=SEND_TIMEOUT_S,
        monotonic=fake.monotonic,
        wall=fake.wall,
    )


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Freed by reference counting alone, as the service needs (`gc.freeze()` and
    high thresholds make full collections rare)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def keep(clock: Clock, stream: Stream) -> None:
    clock.add(stream, heartbeats=stream)


def test_idle_streams_beat_once_per_period(clock: Clock) -> None:
    idle, busy = Stream(), Stream()
    keep(clock, idle)
    keep(clock, busy)
    assert idle.next_heartbeat == HEARTBEAT_S
    clock.tick(5)
    assert idle.beats == 0
    busy.next_heartbeat = 19  # it wrote at 9: its next beat moved
    clock.tick(10.5)
    assert (idle.beats, busy.beats) == (1, 0)
    clock.tick(15)
    assert idle.beats == 1
    clock.tick(21)
    assert (idle.beats, busy.beats) == (2, 1)
    clock.tick(31)
    assert (idle.beats, busy.beats) == (3, 2)


class Pinger(Stream):
    """Sets its own next time in `heartbeat`, as a WebSocket stream does (its ping
    interval, then its pong deadline): sooner than the clock's period."""

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self.at: list[float] = []

    def heartbeat(self) -> None:
        super().heartbeat()
        self.at.append(self.next_heartbeat - HEARTBEAT_S)  # the clock's `now`
        self.next_heartbeat = self.at[-1] + self.every


def test_an_owner_that_sets_its_own_next_beat_is_called_then(clock: Clock) -> None:
    pinger = Pinger(every=HEARTBEAT_S / 4)
    keep(clock, pinger)
    step = HEARTBEAT_S / 8
    for i in range(1, 17):
        clock.tick(i * step)
    # The first beat one period after `add`; from then on every quarter period,
    # as the owner asked, not once per period.
    assert pinger.at == [HEARTBEAT_S, 12.5, 15.0, 17.5, 2 * HEARTBEAT_S]


def test_heartbeats_stay_spread_as_the_streams_are(clock: Clock) -> None:
    """Each tick hands out only the heartbeats due by then, not a second's worth."""
    streams = [Stream() for _ in range(100)]
    for stream in streams:
        keep(clock, stream)
    for i, stream in enumerate(streams):
        stream.next_heartbeat = 10 + i * 0.1  # their last writes were spread
    clock.tick(10.05)
    assert sum(s.beats for s in streams) == 1
    clock.tick(12.05)
    assert sum(s.beats for s in streams) == 21
    clock.discard(streams[50])
    clock.tick(20)
    assert streams[50].beats == 0
    assert sum(s.beats for s in streams) == 99


def test_stalled_writer_is_aborted_once(clock: Clock, fake: FakeTime) -> None:
    stalled = Stream()
    keep(clock, stalled)
    for second in range(1, 100):
        clock.tick(second)  # idle: heartbeats only
    assert not stalled.aborted
    stalled.send_started = 100.0
    fake.now = 100.0
    for now in (100.0, 110.0, 120.0, 129.9):
        clock.tick(now)
    assert not stalled.aborted
    clock.tick(130.0)
    assert stalled.aborted
    stalled.aborted = False
    beats = stalled.beats
    clock.tick(200)
    assert not stalled.aborted  # dropped from the clock after its abort
    assert stalled.beats == beats
    assert len(clock) == 0


def test_the_drains_end_aborts_only_the_sends_in_progress(clock: Clock, fake: FakeTime) -> None:
    """`abort_sends`: the writers stuck in a send now, whatever their timeout; the
    idle ones go on, and an aborted one is forgotten."""
    stuck, idle = Stream(), Stream()
    keep(clock, stuck)
    clock.add(idle)
    fake.now = 5.0
    stuck.send_started = 4.0
    assert clock.abort_sends() == 1
    assert stuck.aborted
    assert not idle.aborted
    stuck.aborted = False
    assert clock.abort_sends() == 0
    clock.tick(200)
    assert not stuck.aborted
    assert stuck.beats == 0


def test_a_stream_without_heartbeats_is_still_watched_for_stalls(
    clock: Clock, fake: FakeTime
) -> None:
    """A WebSocket's writer: its slot comes up every `send_timeout_s` only."""
    stalled = Stream()
    clock.add(stalled)
    clock.tick(29.9)
    stalled.send_started = 29.95  # a send starts just before its slot comes up
    clock.tick(30.0)
    assert not stalled.aborted
    clock.tick(59.9)
    assert not stalled.aborted
    clock.tick(59.95)
    assert stalled.aborted
    assert stalled.beats == 0


def test_a_quiet_tick_touches_nothing(clock: Clock) -> None:
    """Nothing due: the tick looks at the heap's head only."""
    streams = [Stream() for _ in range(1000)]
    for stream in streams:
        keep(clock, stream)
        stream.send_started = 1.0  # sends in progress, not stalled yet
    clock.tick(9.9)
    assert not any(s.beats or s.aborted for s in streams)


def test_expiry_warns_then_closes(clock: Clock, fake: FakeTime) -> None:
    owner = Owner()
    expires_at = EPOCH + 3600
    clock.expiry(owner, expires_at)
    clock.tick(3600 - EXPIRY_WARNING_S - 0.1)
    assert owner.calls == []
    clock.tick(3600 - EXPIRY_WARNING_S)
    assert owner.calls == [("warn", int(expires_at))]
    clock.tick(3599.9)
    assert len(owner.calls) == 1
    clock.tick(3600)
    assert owner.calls == [("warn", int(expires_at)), ("expire", None)]
    clock.tick(7200)
    assert len(owner.calls) == 2
    assert len(clock) == 0


def test_a_short_token_is_warned_at_half_its_life(clock: Clock, fake: FakeTime) -> None:
    owner = Owner()
    fake.now = 50.0
    clock.expiry(owner, EPOCH + 50 + 2.5)
    clock.tick(51.2)
    assert owner.calls == []
    clock.tick(51.25)
    assert owner.calls == [("warn", int(EPOCH + 52.5))]
    clock.tick(52.5)
    assert owner.calls[-1] == ("expire", None)


def test_warning_and_close_due_in_one_tick_come_in_order(clock: Clock) -> None:
    """A tick late by more than the warning's lead still warns first."""
    owner = Owner()
    clock.expiry(owner, EPOCH + 2)
    clock.tick(5)
    assert owner.calls == [("warn", int(EPOCH + 2)), ("expire", None)]


def test_a_token_without_expiry_gets_no_entry(clock: Clock) -> None:
    owner = Owner()
    clock.expiry(owner, 0.0)
    clock.expiry(owner, -1.0)
    assert len(clock) == 0
    clock.tick(10**9)
    assert owner.calls == []


def test_registering_again_replaces_the_expiry(clock: Clock, fake: FakeTime) -> None:
    """A WebSocket's fresh `auth`: the old token's warning and close never come."""
    owner = Owner()
    clock.expiry(owner, EPOCH + 2)
    clock.tick(1)
    assert owner.calls == [("warn", int(EPOCH + 2))]
    fake.now = 1.5
    clock.expiry(owner, EPOCH + 3600)
    clock.tick(2)
    clock.tick(3000)
    assert owner.calls == [("warn", int(EPOCH + 2))]
    clock.tick(3600 - EXPIRY_WARNING_S)
    clock.tick(3599.9)
    assert owner.calls[1:] == [("warn", int(EPOCH + 3600))]
    clock.tick(3600)
    assert owner.calls[1:] == [("warn", int(EPOCH + 3600)), ("expire", None)]
    # A fresh token without expiry drops the earlier one.
    clock.expiry(owner, EPOCH + 7200)
    clock.expiry(owner, 0.0)
    clock.tick(10**6)
    assert len(owner.calls) == 3


def test_a_discarded_owner_is_freed_at_once(clock: Clock, gc_off: None) -> None:
    """The heap must not keep a closed stream (and all it references) alive until
    its slot comes up, nor until its token's expiry."""
    beating, silent, expiring = Stream(), Stream(), Owner()
    keep(clock, beating)
    clock.add(silent)
    clock.expiry(expiring, EPOCH + 3600)
    refs = weakref.ref(beating), weakref.ref(silent), weakref.ref(expiring)
    clock.tick(beating.next_heartbeat + 1)
    assert (beating.beats, silent.beats) == (1, 0)
    for owner in (beating, silent, expiring):
        clock.discard(owner)
    del beating, silent, expiring, owner
    assert [ref() for ref in refs] == [None, None, None]
    # Their emptied slots are dropped when they come up; nothing is called.
    clock.tick(10**6)
    assert len(clock) == 0


def test_emptied_slots_are_compacted_once_they_are_most_of_the_heap(clock: Clock) -> None:
    """A client re-sending `auth` leaves one emptied slot per frame until the old
    token's expiry; they never outnumber the live ones for long."""
    owner = Owner()
    for i in range(10 * COMPACT_MIN):
        clock.expiry(owner, EPOCH + 3600 + i)
    assert len(clock) <= 2 * COMPACT_MIN
    clock.tick(10**6)
    assert owner.calls == [("warn", int(EPOCH + 3600 + 10 * COMPACT_MIN - 1)), ("expire", None)]
    assert len(clock) == 0


def test_a_failing_owner_does_not_stop_the_others(clock: Clock) -> None:
    class Broken(Owner):
        def warn_expiring(self, expires_at: int) -> None:
            raise RuntimeError("bug")

    broken, fine = Broken(), Owner()
    clock.expiry(broken, EPOCH + 100)
    clock.expiry(fine, EPOCH + 100)
    clock.tick(100)
    assert broken.calls == [("expire", None)]
    assert fine.calls == [("warn", int(EPOCH + 100)), ("expire", None)]


async def test_the_heartbeat_wakes_the_queue_not_the_writer(clock: Clock) -> None:
    """One way: the clock wakes the stream's queue (as a delivery would);
    its writer then sends the keep-alive. A write pushes the next one back."""
    watch, queue = SendWatch(), DeliveryQueue(maxlen=4, transport="sse")
    clock.add(watch, heartbeats=queue)
    due = queue.next_heartbeat
    queue.next_heartbeat = due + 5  # its stream wrote meanwhile
    clock.tick(due + 1)
    assert not queue.heartbeat_due
    clock.tick(due + 6)
    assert queue.heartbeat_due
    await asyncio.wait_for(queue.wait(), 1)
    assert queue.drain() == []
    clock.discard(watch)
    queue.heartbeat_due = False
    clock.tick(due + 100)
    assert not queue.heartbeat_due


async def test_the_running_clock_ends_on_time() -> None:
    """Real time: the supervised loop warns, then expires, within a tick or two."""
    clock = Clock(heartbeat_s=HEARTBEAT_S, send_timeout_s=SEND_TIMEOUT_S)
    expired = asyncio.Event()
    seen: list[tuple[str, float]] = []

    class Connection(Owner):
        def warn_expiring(self, expires_at: int) -> None:
            super().warn_expiring(expires_at)
            seen.append(("warn", time.time()))

        def expire(self) -> None:
            super().expire()
            seen.append(("expire", time.time()))
            expired.set()

    connection = Connection()
    expires_at = time.time() + 0.4
    clock.expiry(connection, expires_at)
    runner = asyncio.create_task(clock.run())
    try:
        await asyncio.wait_for(expired.wait(), 5)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert connection.calls == [("warn", int(expires_at)), ("expire", None)]
    (_, warned_at), (_, expired_at) = seen
    assert expires_at - 0.2 - 0.01 <= warned_at < expired_at
    assert expires_at - 0.01 <= expired_at < expires_at + 1.0


@pytest.mark.parametrize("seed", range(5))
def test_everything_comes_at_the_first_tick_at_or_after_its_time(seed: int) -> None:
    """The wheel's slices are `TICK_S` wide, its ticks are not bound to them: a
    warning, a close or a heartbeat never comes before its time, and always at the
    first tick at or after it, wherever the ticks fall (several in one slice,
    several slices skipped)."""
    rng = random.Random(seed)
    fake = FakeTime()
    clock = Clock(
        heartbeat_s=HEARTBEAT_S,
        send_timeout_s=SEND_TIMEOUT_S,
        monotonic=fake.monotonic,
        wall=fake.wall,
    )
    owners = [Owner() for _ in range(200)]
    expiries = [rng.uniform(0.0, 200.0) for _ in owners]
    for owner, expires in zip(owners, expiries, strict=True):
        clock.expiry(owner, EPOCH + expires)
    streams = [Stream() for _ in range(50)]
    for stream in streams:
        keep(clock, stream)
    ticks = sorted(rng.uniform(0.0, 260.0) for _ in range(2000))
    ticks += [t + TICK_S / 7 for t in ticks[:200]]  # several ticks in one slice
    previous = 0.0
    for now in sorted(ticks):
        beats = [s.beats for s in streams]
        clock.tick(now)
        for owner, expires in zip(owners, expiries, strict=True):
            warn_at = expires - min(EXPIRY_WARNING_S, expires / 2)
            warned = ("warn", int(EPOCH + expires)) in owner.calls
            assert warned == (warn_at <= now), (warn_at, now)
            assert (("expire", None) in owner.calls) == (expires <= now), (expires, now)
        for stream, before in zip(streams, beats, strict=True):
            if stream.beats > before:
                assert stream.beats == before + 1
                # It was due by now, and not yet due at the tick before.
                assert stream.next_heartbeat == now + HEARTBEAT_S
        for stream in streams:
            assert stream.next_heartbeat > now
        previous = now
    assert previous > 200
    assert all(len(owner.calls) == 2 for owner in owners)


def test_one_slot_per_registration_reused_from_slice_to_slice(clock: Clock) -> None:
    """A stream is one slot in the wheel for its whole life, moved from slice to
    slice by its heartbeats and writes; a token's expiry is one more."""
    streams = [Stream() for _ in range(300)]
    owners = [Owner() for _ in streams]
    for stream, owner in zip(streams, owners, strict=True):
        keep(clock, stream)
        clock.expiry(owner, EPOCH + 3600)
    assert len(clock) == 600
    for second in range(1, 100):
        for stream in streams[::3]:
            stream.next_heartbeat = second + 5  # these wrote: their beat moved
        clock.tick(second + 0.5)
        assert len(clock) == 600
    assert sum(s.beats for s in streams) > 0
    for stream in streams:
        clock.discard(stream)
    clock.tick(200)
    assert len(clock) == 300  # the expiries


def test_an_idle_stream_costs_the_clock_little_memory(clock: Clock) -> None:
    """What an idle SSE stream keeps in the clock: its watch slot, its expiry slot
    and their place in the wheel's lists and the owner maps; the heap version also
    kept a tuple, a float and a sequence number per heap entry, two entries."""
    count = 2000
    streams = [Stream() for _ in range(count)]
    owners = [Owner() for _ in range(count)]
    expires_at = EPOCH + 3600.0
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for stream, owner in zip(streams, owners, strict=True):
            keep(clock, stream)
            clock.expiry(owner, expires_at)
        for second in range(1, 40):
            clock.tick(float(second))  # heartbeats move the slots between slices
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    clock_file = [tracemalloc.Filter(True, "*service/fanout/clock.py")]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(clock_file).compare_to(
            before.filter_traces(clock_file), "filename"
        )
    )
    # 249 bytes when written (the heap version: 468 here)
    assert 0 < grown / count <= 300, grown / count


def test_a_token_expiring_in_the_far_future_is_held_and_never_due(clock: Clock) -> None:
    owner = Owner()
    clock.expiry(owner, 1e308)
    clock.tick(10**9)
    assert owner.calls == []
    assert len(clock) == 1
    clock.discard(owner)
    assert len(clock) == 1  # emptied, dropped when its slice comes up


def test_a_warning_that_ends_its_owner_leaves_the_counts_right(clock: Clock) -> None:
    """An owner discarded by its own warning (warning and close due in one tick)
    is not closed, and the wheel's counts stay exact: compaction still comes once
    the emptied slots are most of it."""

    class EndsOnWarning(Owner):
        def warn_expiring(self, expires_at: int) -> None:
            super().warn_expiring(expires_at)
            clock.discard(self)

    owner = EndsOnWarning()
    clock.expiry(owner, EPOCH + 2)
    clock.tick(5)
    assert owner.calls == [("warn", int(EPOCH + 2))]
    assert len(clock) == 0
    stream = Stream()
    for _ in range(COMPACT_MIN):
        keep(clock, stream)  # each re-registration empties the previous slot
    assert len(clock) == COMPACT_MIN
    keep(clock, stream)
    assert len(clock) == 1  # compacted: only the live slot is left
