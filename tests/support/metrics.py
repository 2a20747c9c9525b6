"""Read the process' metrics the way a scrape sees them (by exposed sample name),
never through prometheus_client's private fields."""

from __future__ import annotations

from prometheus_client import REGISTRY


def metric(name: str, **labels: str) -> float:
    """The current value of sample `name` (e.g. `notify_slow_consumers_total`) with
    exactly these labels; 0.0 when it was never set."""
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value
