"""Which Redis refusals (`notify_publisher.refusals`: the table of causes) this
process saw lately, for readiness. A refusal becomes a retry-able
`BrokerRefusedError` whose cause names the reply."""

from __future__ import annotations

import time

from notify_publisher.refusals import OTHER, REFUSALS, Refusal, refusal_for

from service import metrics

__all__ = ["OTHER", "REFUSALS", "RecentRefusals", "Refusal", "refusal_for"]


class RecentRefusals:
    """The causes of the refusals seen in the last `window_s` seconds and since the
    last write that went through, for readiness: still ready (streams work: reads,
    SUBSCRIBE and raw PUBLISH are not refused by a full Redis), but "degraded" with
    the cause. The window ends it too: a pod that writes nothing would otherwise
    say degraded forever."""

    __slots__ = ("_seen", "window_s")

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._seen: dict[str, float] = {}

    def record(self, cause: str) -> None:
        self._seen[cause] = time.monotonic()

    def clear(self) -> None:
        """A write went through: Redis accepts writes again."""
        self._seen.clear()

    def causes(self) -> list[str]:
        now = time.monotonic()
        return sorted(c for c, at in self._seen.items() if now - at < self.window_s)


def _export_zero_series() -> None:
    """Every cause's counter exists from the start, at 0 (service/metrics.py says why)."""
    for refusal in (*REFUSALS.values(), OTHER):
        metrics.REDIS_REFUSALS.labels(cause=refusal.cause)


_export_zero_series()
