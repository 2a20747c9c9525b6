"""One Redis round trip per event-loop iteration instead of one per connection.

In a reconnect storm thousands of connections reach the same step (revocation
check, history head, first history page) within a few loop iterations. Each used
to take a pool connection, write its own command and wait for its own reply.
`TickBatcher` collects every request made during one iteration and runs them as
one call (`MGET` of all keys, one pipeline of all reads), then hands each caller
its own answer. Nothing is skipped or cached: every caller gets the value Redis
holds now, read after it asked; only the round trips are shared.

    caller ─▶ TickBatcher.get(item) ─┐   (same iteration: joins the open batch)
    caller ─▶ TickBatcher.get(item) ─┤
                                     └─▶ next iteration: run_many([items…]) once
                                         ─▶ each caller's future gets its result
                                            (or the batch's exception)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

from service import metrics

K = TypeVar("K")
V = TypeVar("V")

# Largest batch sent as one call: a bounded MGET / pipeline (Redis answers a few
# hundred reads in well under a millisecond; a huge reply would stall the loop
# while it is parsed).
MAX_BATCH: Final = 512


class TickBatcher(Generic[K, V]):
    """Calls `run_many(items)` once per loop iteration for every item asked for in it.

    `run_many` must return one result per item, in order. A failure of the call
    (Redis unreachable) is every caller's failure. A caller that is cancelled
    while waiting does not cancel the batch: the others still get their answers.
    """

    __slots__ = ("_max_batch", "_observe", "_pending", "_run_many", "_tasks", "largest_batch")

    def __init__(
        self,
        run_many: Callable[[list[K]], Awaitable[Sequence[V]]],
        *,
        operation: str,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._observe = metrics.REDIS_BATCH_SIZE.labels(operation=operation).observe
        self._run_many = run_many
        self._max_batch = max_batch
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        # The batches in flight. Each task is owned here, never outlives the loop's
        # work for its callers, and hands any exception to their futures.
        self._tasks: set[asyncio.Task[None]] = set()
        # The most requests one call has carried (diagnosis and tests).
        self.largest_batch = 0

    async def get(self, item: K) -> V:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V] = loop.create_future()
        if not self._pending:
            # The first request of this iteration: the batch runs in the next one,
            # after every connection woken in this one has added its own.
            loop.call_soon(self._flush)
        self._pending.append((item, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.largest_batch = max(self.largest_batch, min(len(batch), self._max_batch))
        loop = asyncio.get_running_loop()
        for start in range(0, len(batch), self._max_batch):
            chunk = batch[start : start + self._max_batch]
            self._observe(len(chunk))
            task = loop.create_task(self._run(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            results = await self._run_many([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError("run_many returned a result count unlike its input")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def aclose(self) -> None:
        """Wait for the batches in flight (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class KeyReader:
    """`MGET` coalesced per loop iteration: `await reader.get_values(*keys)` answers
    exactly what `broker.get_values(*keys)` would, sharing the round trip with every
    other read of the same iteration (ticket and revocation checks)."""

    __slots__ = ("_batcher", "_get_values")

    def __init__(self, get_values: Callable[..., Awaitable[list[str | None]]]) -> None:
        self._get_values = get_values
        self._batcher: TickBatcher[tuple[str, ...], list[str | None]] = TickBatcher(
            self._mget, operation="mget"
        )

    @property
    def largest_batch(self) -> int:
        return self._batcher.largest_batch

    async def get_values(self, *keys: str) -> list[str | None]:
        if not keys:
            return []
        return await self._batcher.get(keys)

    async def _mget(self, requests: list[tuple[str, ...]]) -> list[list[str | None]]:
        if len(requests) == 1:
            return [await self._get_values(*requests[0])]
        # Each distinct key once; every request gets its own keys' values back.
        unique = list(dict.fromkeys(key for keys in requests for key in keys))
        values = dict(zip(unique, await self._get_values(*unique), strict=True))
        return [[values[key] for key in keys] for keys in requests]
