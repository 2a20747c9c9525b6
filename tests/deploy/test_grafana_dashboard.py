"""deploy/grafana/notify-dashboard.json: well-formed, and built only on metric
names the service really exports (checked against a live /metrics)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from .conftest import NotifyServer
from .manifests import ROOT
from .prometheus import (
    METRICS,
    RELAY,
    SERVE,
    family,
    metric_names,
    rule_metrics,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "notify-dashboard.json"
TRANSPORTS = {"sse": "SSE", "ws": "WebSocket"}
GOLDEN_SIGNALS = ("traffic", "errors", "latency", "saturation")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def series_in(expr: str) -> set[str]:
    return metric_names(expr)


def test_ids_unique_and_layout_fits_the_grid() -> None:
    all_panels = load()["panels"]
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        columns = range(g["x"], g["x"] + g["w"])
        mine = {(x, y) for x in columns for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_metric_is_known_and_every_known_metric_is_shown() -> None:
    used = {family(s) for e in expressions() for s in series_in(e)}
    assert used - METRICS.keys() == set(), "metrics missing from tests/deploy/prometheus.py"
    assert METRICS.keys() - used == set(), "known metrics the dashboard does not show"


def test_the_dashboard_shows_every_metric_an_alert_uses() -> None:
    used = {family(s) for e in expressions() for s in series_in(e)}
    assert rule_metrics() - used == set()


def test_golden_signals_per_transport() -> None:
    """A row per transport with its traffic, errors, latency and saturation."""
    titles = {p["title"]: p for p in panels()}
    for label, name in TRANSPORTS.items():
        for signal in GOLDEN_SIGNALS:
            panel = titles[f"{name}: {signal}"]
            exprs = [t["expr"] for t in panel["targets"]]
            if signal != "latency":  # measured before the transport: shared
                assert all(f'transport="{label}"' in e for e in exprs), panel["title"]


def test_queries_use_rates_on_counters_only_and_the_variables() -> None:
    for expr in expressions():
        for series in series_in(expr):
            metric = METRICS[family(series)]
            if metric.kind == "gauge":
                assert not re.search(rf"(rate|increase)\(\s*{series}\b", expr), expr
            else:
                assert re.search(rf"(rate|increase)\(\s*{series}\b", expr), expr
            if metric.kind == "histogram":
                assert series.endswith(("_bucket", "_count")), expr
        if re.search(r"_bucket\b", expr):
            assert "histogram_quantile" in expr, expr
            assert "by (le" in expr, expr
        assert '$namespace"' in expr, expr
        # The relay's pods are not in the pod variable (built from notify serve's).
        relay_only = all(METRICS[family(s)].source == RELAY for s in series_in(expr))
        assert relay_only or '$pod"' in expr, expr
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}"
    names = {v["name"] for v in load()["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= names


@pytest.mark.slow
def test_the_service_exports_every_metric_the_dashboard_uses(
    notify_server: NotifyServer,
) -> None:
    """Series with known label values exist from the start, at 0; auth refusals
    (open-ended reasons) from the first refusal, which this test causes."""
    refused = httpx.get(f"{notify_server.base_url}/v1/patients/me/events", timeout=5)
    assert refused.status_code == 401
    text = httpx.get(f"{notify_server.base_url}/metrics", timeout=5).text
    exported = {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}
    samples = {m.group(1) for m in re.finditer(r"^([a-z_]+)[{ ]", text, re.M)}
    for name, metric in METRICS.items():
        if metric.source != SERVE:
            continue  # another program exports it (see tests/deploy/prometheus.py)
        # prometheus_client names a counter's family without `_total` in TYPE lines.
        found = exported.get(name) or exported.get(name.removesuffix("_total"))
        assert found == metric.kind, f"{name}: exported as {found!r}"
        wanted = f"{name}_count" if metric.kind == "histogram" else name
        assert wanted in samples, f"{name}: no series before the first event"
