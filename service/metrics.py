"""Prometheus metrics. Label values come from fixed sets only: never a patient id,
appointment id, token or path parameter, so the series count cannot grow with
the number of patients."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Gauges say how to combine worker processes in prometheus-client's multiprocess
# mode (`NOTIFY_WORKERS` > 1); the setting is ignored in a single process.
OPEN_STREAMS = Gauge(
    "notify_open_streams", "Open client streams.", ["transport"], multiprocess_mode="livesum"
)
EVENTS_RECEIVED = Counter(
    "notify_events_received_total",
    "Messages received from the broker, by outcome (delivered, invalid, duplicate, no_subscriber, "
    "overflow: dropped by a full inbox, then resynced from history).",
    ["outcome"],
)
HISTORY_ENTRIES_DROPPED = Counter(
    "notify_history_entries_dropped_total",
    "History entries not replayed, by reason (too_large, invalid, rule).",
    ["reason"],
)
DELIVERIES = Counter(
    "notify_deliveries_total", "Events written to client connections.", ["transport"]
)
SLOW_CONSUMERS = Counter(
    "notify_slow_consumers_total",
    "Connections closed because their bounded queue overflowed.",
    ["transport"],
)
AUTH_REFUSALS = Counter(
    "notify_auth_refusals_total",
    "Refused credentials, by reason (missing, malformed, invalid, expired, claims, "
    "algorithm, key, ambiguous, revoked, ticket).",
    ["reason"],
)
CAPACITY_REFUSALS = Counter(
    "notify_capacity_refusals_total",
    "Connections refused because a connection limit was reached, by transport and limit.",
    ["transport", "limit"],
)
HEADER_TIMEOUTS = Counter(
    "notify_header_timeouts_total",
    "Connections closed because a request's headers were not complete within "
    "NOTIFY_HEADER_TIMEOUT_S, by stage (before_request: nothing sent; in_headers: "
    "a partial request, answered 408).",
    ["stage"],
)
LISTENER_RECONNECTS = Counter(
    "notify_listener_reconnects_total", "Times the pub/sub listener reconnected to Redis."
)
LISTENER_UP = Gauge(
    "notify_listener_up",
    "1 while the pub/sub listener is connected (the minimum over live workers).",
    multiprocess_mode="livemin",
)
REDIS_SHARDS_DOWN = Gauge(
    "notify_redis_shards_down",
    "Redis Cluster shard primaries that did not answer the last readiness check.",
    multiprocess_mode="livemax",
)
REDIS_ERRORS = Counter(
    "notify_redis_errors_total", "Redis commands that failed, by operation.", ["operation"]
)
REDIS_REFUSALS = Counter(
    "notify_redis_refusals_total",
    "Redis error replies (refusals: full, read-only, loading, busy …) answered with a "
    "retry-able 503, by cause (redis_oom, redis_readonly, … redis_error for the rest).",
    ["cause"],
)
READY_DEGRADED = Gauge(
    "notify_ready_degraded",
    "1 while readiness says `degraded` for this cause (still ready: streams work), "
    "else 0; set at each readiness check.",
    ["cause"],
    multiprocess_mode="livemax",
)
TASK_RESTARTS = Counter(
    "notify_task_restarts_total", "Supervised background tasks restarted after a crash.", ["task"]
)
DELIVERY_LATENCY = Histogram(
    "notify_delivery_latency_seconds",
    "From the publish timestamp stamped into the event to its fan-out in this process.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STREAM_DURATION = Histogram(
    "notify_stream_duration_seconds",
    "How long client streams stayed open.",
    ["transport"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600),
)
REDIS_BATCH_SIZE = Histogram(
    "notify_redis_batch_size",
    "Requests carried by one coalesced Redis call (revocation/ticket MGET, history "
    "heads and pages, SUBSCRIBE), by operation.",
    ["operation"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)

# --- The outbox relay (service/outbox/relay.py) ----------------------------------
# Every relay reports the same table: combine them with max(), not sum().
OUTBOX_BACKLOG = Gauge(
    "notify_outbox_backlog_rows",
    "Rows of notify_outbox not yet published (as of the relay's last check).",
    multiprocess_mode="livemax",
)
OUTBOX_OLDEST_AGE = Gauge(
    "notify_outbox_oldest_pending_age_seconds",
    "Age of the oldest unpublished row of notify_outbox (0 when there is none).",
    multiprocess_mode="livemax",
)
OUTBOX_PUBLISHED = Counter(
    "notify_outbox_published_total", "Outbox rows published and marked published."
)
OUTBOX_FAILURES = Counter(
    "notify_outbox_failures_total",
    "Relay failures that are retried with backoff, by reason (redis_unavailable, "
    "database_unavailable, publish_error).",
    ["reason"],
)
OUTBOX_SET_ASIDE = Counter(
    "notify_outbox_set_aside_total",
    "Outbox rows that can never be published, moved to notify_outbox_dead.",
)

# Label values known in advance: their series are exported at 0 from the start. A
# series born at its first increment shows no `increase()` for that increment (an
# alert on "any event dropped" would miss the first drop), and a dashboard panel
# would be empty instead of 0 (deploy/prometheus, deploy/grafana rely on this).
TRANSPORTS = ("sse", "ws")
EVENT_OUTCOMES = ("delivered", "invalid", "duplicate", "no_subscriber", "overflow")
HISTORY_DROP_REASONS = ("too_large", "invalid", "rule")
CAPACITY_LIMITS = ("process", "subject")
HEADER_TIMEOUT_STAGES = ("before_request", "in_headers")
OUTBOX_FAILURE_REASONS = ("redis_unavailable", "database_unavailable", "publish_error")


def _export_zero_series() -> None:
    for transport in TRANSPORTS:
        OPEN_STREAMS.labels(transport=transport)
        DELIVERIES.labels(transport=transport)
        SLOW_CONSUMERS.labels(transport=transport)
        STREAM_DURATION.labels(transport=transport)
        for limit in CAPACITY_LIMITS:
            CAPACITY_REFUSALS.labels(transport=transport, limit=limit)
    for outcome in EVENT_OUTCOMES:
        EVENTS_RECEIVED.labels(outcome=outcome)
    for reason in HISTORY_DROP_REASONS:
        HISTORY_ENTRIES_DROPPED.labels(reason=reason)
    for stage in HEADER_TIMEOUT_STAGES:
        HEADER_TIMEOUTS.labels(stage=stage)
    # The publish path's errors are alerted on (NotifyPublishErrors).
    REDIS_ERRORS.labels(operation="publish")
    for reason in OUTBOX_FAILURE_REASONS:
        OUTBOX_FAILURES.labels(reason=reason)


_export_zero_series()
