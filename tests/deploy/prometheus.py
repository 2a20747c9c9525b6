"""Readers for the shipped alert rules, their promtool tests and the runbook."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from .manifests import ROOT

RULES = ROOT / "deploy" / "prometheus" / "notify-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "notify-rules.test.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RENDER_SCRIPT = ROOT / "scripts" / "render-prometheusrule.py"

PROMETHEUS_HINT = (
    "{name} not found: the alert rules are checked with Debian's Prometheus. "
    "Install it: `apt-get install -y prometheus` (scripts/ensure-system-packages does)."
)


def find_binary(name: str) -> str:
    """`promtool` or `prometheus` from PATH (Debian puts both in /usr/bin)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(PROMETHEUS_HINT.format(name=name), pytrace=False)
    return found


@cache
def rule_groups() -> tuple[dict[str, Any], ...]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return tuple(groups)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def alert(name: str) -> dict[str, Any]:
    (found,) = [a for a in alerts() if a["alert"] == name]
    return found


def unit_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return tests


def runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings (lower case, spaces to dashes)."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        heading = re.match(r"#{1,6} (.+)$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels or keywords)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
    without_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", without_grouping))
    keywords = {"and", "or", "unless", "bool", "offset", "le", "inf", "nan"}
    return {n for n in names if n.lower() not in keywords and not re.fullmatch(r"\d.*", n)}


def fast_rules(path: Path, for_duration: str) -> Path:
    """The shipped rules with every `for:` set to `for_duration`, written to `path`
    (the live test cannot wait the shipped minutes). Nothing else changes."""
    groups = [
        {
            **group,
            "rules": [{**r, "for": for_duration} if "for" in r else r for r in group["rules"]],
        }
        for group in rule_groups()
    ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# Every metric the alert rules and the dashboard use: its type, and which program
# exports it. The live tests check each `SERVE` metric against a real `notify serve`;
# the others are listed here on purpose, with the reason they are not checked there.
SERVE = "notify serve"
# notify serve's registry holds the outbox metrics too (service/metrics.py), at 0:
# only the relay's values mean anything: test_prometheus_relay_live.py looks for
# them in a real relay's, test_prometheus_live.py not in notify serve's.
RELAY = "notify relay (the outbox)"
KUBE_STATE = "kube-state-metrics"


@dataclass(frozen=True)
class Metric:
    kind: str  # counter, gauge, histogram
    source: str


METRICS: dict[str, Metric] = {
    "notify_open_streams": Metric("gauge", SERVE),
    "notify_listener_up": Metric("gauge", SERVE),
    "notify_redis_shards_down": Metric("gauge", SERVE),
    "notify_events_received_total": Metric("counter", SERVE),
    "notify_history_entries_dropped_total": Metric("counter", SERVE),
    "notify_deliveries_total": Metric("counter", SERVE),
    "notify_slow_consumers_total": Metric("counter", SERVE),
    "notify_auth_refusals_total": Metric("counter", SERVE),
    "notify_capacity_refusals_total": Metric("counter", SERVE),
    "notify_listener_reconnects_total": Metric("counter", SERVE),
    "notify_redis_errors_total": Metric("counter", SERVE),
    "notify_task_restarts_total": Metric("counter", SERVE),
    "notify_header_timeouts_total": Metric("counter", SERVE),
    "notify_delivery_latency_seconds": Metric("histogram", SERVE),
    "notify_stream_duration_seconds": Metric("histogram", SERVE),
    "notify_redis_refusals_total": Metric("counter", SERVE),
    "notify_ready_degraded": Metric("gauge", SERVE),
    "notify_outbox_backlog_rows": Metric("gauge", RELAY),
    "notify_outbox_oldest_pending_age_seconds": Metric("gauge", RELAY),
    "notify_outbox_published_total": Metric("counter", RELAY),
    "notify_outbox_failures_total": Metric("counter", RELAY),
    "notify_outbox_set_aside_total": Metric("counter", RELAY),
    "kube_pod_status_ready": Metric("gauge", KUBE_STATE),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def family(series: str) -> str:
    """The metric a series name belongs to (`x_bucket` of histogram `x` is `x`)."""
    for suffix in HISTOGRAM_SUFFIXES:
        base = series.removesuffix(suffix)
        if base != series and base in METRICS and METRICS[base].kind == "histogram":
            return base
    return series


def rule_metrics() -> set[str]:
    return {family(m) for rule in alerts() for m in metric_names(rule["expr"])}
