"""A Redis Cluster client whose slot-map reads keep the map it already has, as
when the node asked has not heard of a change yet (gossip takes a moment to
reach every node, and redis-py asks a node picked at random)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def stale_slot_map(manager: Any, reads: int | None = None) -> Iterator[list[int]]:
    """The next `reads` slot-map reads of redis-py's `manager` (a NodesManager,
    asyncio or blocking) change nothing; every read in the block when `reads`
    is None. Yields a one-item list: how many reads were kept stale so far."""
    # NodesManager has slots: the method is replaced on the class, for this
    # instance only (other clients in the process read the real map).
    cls = type(manager)
    real = cls.initialize
    taken = [0]

    def stale(instance: Any) -> bool:
        if instance is not manager or (reads is not None and taken[0] >= reads):
            return False
        taken[0] += 1
        return True

    if inspect.iscoroutinefunction(real):

        async def initialize(self: Any, *args: Any, **kwargs: Any) -> None:
            if not stale(self):
                await real(self, *args, **kwargs)
    else:

        def initialize(self: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[misc]
            if not stale(self):
                real(self, *args, **kwargs)

    cls.initialize = initialize
    try:
        yield taken
    finally:
        cls.initialize = real
