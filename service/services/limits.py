"""Connection limits per process and per subject, with readiness hysteresis."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class Limit(StrEnum):
    PROCESS = "process"
    SUBJECT = "subject"


class ConnectionLimiter:
    """Counts open streams. `try_acquire` refuses past either limit; `saturated`
    turns on above the high-water mark and off only below the low-water mark, so a
    process hovering at the limit does not flap in and out of the load balancer."""

    def __init__(
        self,
        *,
        max_total: int,
        max_per_subject: int,
        high_water: float = 0.9,
        low_water: float = 0.8,
    ) -> None:
        self.max_total = max_total
        self.max_per_subject = max_per_subject
        self._high = max(1, int(max_total * high_water))
        self._low = int(max_total * low_water)
        self._per_subject: Counter[str] = Counter()
        self.total = 0
        self._saturated = False

    def try_acquire(self, subject: str) -> Limit | None:
        """Count one more stream for `subject`; the limit hit, or None if admitted."""
        if self.total >= self.max_total:
            return Limit.PROCESS
        if self._per_subject[subject] >= self.max_per_subject:
            return Limit.SUBJECT
        self.total += 1
        self._per_subject[subject] += 1
        return None

    def release(self, subject: str) -> None:
        self.total -= 1
        self._per_subject[subject] -= 1
        if self._per_subject[subject] <= 0:
            del self._per_subject[subject]

    @property
    def saturated(self) -> bool:
        if self._saturated and self.total <= self._low:
            self._saturated = False
        elif not self._saturated and self.total >= self._high:
            self._saturated = True
        return self._saturated
