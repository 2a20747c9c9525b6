"""The cyclic garbage collector off for a block: what the service frees must go by
reference counting alone (`gc.freeze()` and high thresholds under
`NOTIFY_GC_TUNING` make full collections rare, so a cycle per connection is a leak)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """Collect what earlier code left, then keep the collector off until the end."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
