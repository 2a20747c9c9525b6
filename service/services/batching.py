"""One Redis round trip per event-loop iteration instead of one per connection.

In a reconnect storm thousands of connections reach the same steps (revocation
or ticket check, history head, first history page) within a few loop iterations.
Each used to take a pool connection, write its own command and wait for its own
reply. `TickReads` collects every read asked for during one iteration, whatever
its kind, and runs them as one broker call (`Broker.read_batch`: one pipeline
holding the `MGET` of all keys, the heads and the pages), then hands each caller
its own answer. Nothing is skipped or cached: every caller gets the value Redis
holds now, read after it asked; only the round trips are shared.

    caller ─▶ TickReads.get_values(*keys) ─┐   (same iteration: joins the open batch)
    caller ─▶ TickReads.head(key)         ─┤
    caller ─▶ TickReads.page(read)        ─┤
                                          └─▶ next iteration: read_batch(…) once
                                              ─▶ each caller's future gets its answer
                                                 (or its read's exception, or the
                                                 call's)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from service import metrics
from service.brokers.base import HistoryPage, HistoryRead, ReadBatch, ReadReplies

T = TypeVar("T")

# Largest number of reads of one kind sent in one call: a bounded MGET / pipeline
# (Redis answers a few hundred reads in well under a millisecond; a huge reply
# would stall the loop while it is parsed).
MAX_BATCH: Final = 512

_OBSERVE_VALUES: Final = metrics.REDIS_BATCH_SIZE.labels(operation="mget").observe
_OBSERVE_HEADS: Final = metrics.REDIS_BATCH_SIZE.labels(operation="history_head").observe
_OBSERVE_PAGES: Final = metrics.REDIS_BATCH_SIZE.labels(operation="history_page").observe

ReadBatchCall = Callable[[ReadBatch], Awaitable[ReadReplies]]


def _settle(future: asyncio.Future[T], answer: T | Exception) -> None:
    if future.done():  # its caller was cancelled
        return
    if isinstance(answer, Exception):
        future.set_exception(answer)
    else:
        future.set_result(answer)


class TickReads:
    """Calls `read_batch` once per loop iteration for every read asked for in it.

    `read_batch` answers every read in order, a read's own failure in its place
    (that caller's alone); a failure of the whole call (Redis unreachable) is the
    failure of every caller of that call. A caller that is cancelled while
    waiting does not cancel the call: the others still get their answers.
    """

    __slots__ = (
        "_heads",
        "_max_batch",
        "_one_round_trip",
        "_pages",
        "_read_batch",
        "_scheduled",
        "_tasks",
        "_values",
        "largest_batch",
    )

    def __init__(
        self,
        read_batch: ReadBatchCall,
        *,
        max_batch: int = MAX_BATCH,
        one_round_trip: bool = True,
    ) -> None:
        self._read_batch = read_batch
        self._max_batch = max_batch
        # False where `read_batch` cannot send every kind in one round trip (Cluster,
        # memory: `Broker.reads_in_one_round_trip`): each kind is then a call of
        # its own, answered on its own, so a ticket or revocation check never
        # waits for the history pages of the same iteration.
        self._one_round_trip = one_round_trip
        self._values: list[tuple[tuple[str, ...], asyncio.Future[list[str | None]]]] = []
        self._heads: list[tuple[str, asyncio.Future[str | None]]] = []
        self._pages: list[tuple[HistoryRead, asyncio.Future[HistoryPage]]] = []
        self._scheduled = False
        # The calls in flight. Each task is owned here, never outlives the loop's
        # work for its callers, and hands any exception to their futures.
        self._tasks: set[asyncio.Task[None]] = set()
        # The most `get_values` requests one call has carried (diagnosis and tests).
        self.largest_batch = 0

    def _future(self) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if not self._scheduled:
            # The first read of this iteration: the call goes in the next one,
            # after every connection woken in this one has added its own.
            self._scheduled = True
            loop.call_soon(self._flush)
        return loop.create_future()

    async def get_values(self, *keys: str) -> list[str | None]:
        """What `broker.get_values(*keys)` would answer (ticket and revocation checks)."""
        if not keys:
            return []
        future: asyncio.Future[list[str | None]] = self._future()
        self._values.append((keys, future))
        return await future

    async def head(self, history_key: str) -> str | None:
        """The newest id of a history stream, None when it is empty."""
        future: asyncio.Future[str | None] = self._future()
        self._heads.append((history_key, future))
        return await future

    async def page(self, read: HistoryRead) -> HistoryPage:
        """One page of a history stream."""
        future: asyncio.Future[HistoryPage] = self._future()
        self._pages.append((read, future))
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        values, heads, pages = self._values, self._heads, self._pages
        self._values, self._heads, self._pages = [], [], []
        loop = asyncio.get_running_loop()
        n = self._max_batch
        for start in range(0, max(len(values), len(heads), len(pages)), n):
            chunk = (values[start : start + n], heads[start : start + n], pages[start : start + n])
            self.largest_batch = max(self.largest_batch, len(chunk[0]))
            for observe, count in zip(
                (_OBSERVE_VALUES, _OBSERVE_HEADS, _OBSERVE_PAGES),
                (len(chunk[0]), len(chunk[1]), len(chunk[2])),
                strict=True,
            ):
                if count:
                    observe(count)
            if self._one_round_trip:
                self._start(self._run(*chunk), loop)
                continue
            if chunk[0]:
                self._start(self._run(chunk[0], [], []), loop)
            if chunk[1]:
                self._start(self._run([], chunk[1], []), loop)
            if chunk[2]:
                self._start(self._run([], [], chunk[2]), loop)

    def _start(self, call: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        values: list[tuple[tuple[str, ...], asyncio.Future[list[str | None]]]],
        heads: list[tuple[str, asyncio.Future[str | None]]],
        pages: list[tuple[HistoryRead, asyncio.Future[HistoryPage]]],
    ) -> None:
        # Each distinct key once; every request gets its own keys' values back.
        unique = list(dict.fromkeys(key for keys, _ in values for key in keys))
        batch = ReadBatch(keys=unique, heads=[k for k, _ in heads], pages=[r for r, _ in pages])
        futures: list[asyncio.Future[Any]] = [
            *(f for _, f in values),
            *(f for _, f in heads),
            *(f for _, f in pages),
        ]
        try:
            replies = await self._read_batch(batch)
            if (len(replies.values), len(replies.heads), len(replies.pages)) != (
                len(unique),
                len(heads),
                len(pages),
            ):
                raise RuntimeError("read_batch answered a read count unlike its batch")
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                _settle(future, exc)
            return
        by_key = dict(zip(unique, replies.values, strict=True))
        for keys, values_future in values:
            answer = [by_key[key] for key in keys]
            failed = next((v for v in answer if isinstance(v, Exception)), None)
            if failed is not None:
                _settle(values_future, failed)
            else:
                _settle(values_future, [v for v in answer if not isinstance(v, Exception)])
        for (_, head_future), head in zip(heads, replies.heads, strict=True):
            _settle(head_future, head)
        for (_, page_future), page in zip(pages, replies.pages, strict=True):
            _settle(page_future, page)

    async def aclose(self) -> None:
        """Wait for the calls in flight (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
