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

DASHBOARD = ROOT / "deploy" / "grafana" / "notify-dashboard.json"
# The service's metric families (service/metrics.py) the dashboard is built on.
COUNTERS = {
    "notify_events_received_total",
    "notify_deliveries_total",
    "notify_slow_consumers_total",
    "notify_auth_refusals_total",
    "notify_listener_reconnects_total",
    "notify_redis_errors_total",
    "notify_capacity_refusals_total",
}
GAUGES = {"notify_open_streams", "notify_listener_up"}
HISTOGRAMS = {"notify_delivery_latency_seconds", "notify_stream_duration_seconds"}
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def family(series: str) -> str:
    for suffix in SERIES_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in HISTOGRAMS:
            return series[: -len(suffix)]
    return series


def series_in(expr: str) -> set[str]:
    return set(re.findall(r"\bnotify_[a-z_]+\b", expr))


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
    assert used <= COUNTERS | GAUGES | HISTOGRAMS, used - (COUNTERS | GAUGES | HISTOGRAMS)
    assert used == COUNTERS | GAUGES | HISTOGRAMS, (COUNTERS | GAUGES | HISTOGRAMS) - used


def test_queries_use_rates_on_counters_only_and_the_variables() -> None:
    for expr in expressions():
        for series in series_in(expr):
            if family(series) in GAUGES:
                assert not re.search(rf"(rate|increase)\(\s*{series}\b", expr), expr
            if series in COUNTERS or series.endswith(SERIES_SUFFIXES):
                assert re.search(rf"(rate|increase)\(\s*{series}\b", expr), expr
        if re.search(r"notify_\w+_bucket", expr):
            assert "histogram_quantile" in expr, expr
            assert "by (le" in expr, expr
        assert '$namespace"' in expr, expr
        assert '$pod"' in expr, expr
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}"
    names = {v["name"] for v in load()["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= names


@pytest.mark.slow
def test_the_service_exports_every_metric_the_dashboard_uses(
    notify_server: NotifyServer,
) -> None:
    text = httpx.get(f"{notify_server.base_url}/metrics", timeout=5).text
    exported = {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M)}
    expected_types = (
        {c: "counter" for c in COUNTERS}
        | {g: "gauge" for g in GAUGES}
        | {h: "histogram" for h in HISTOGRAMS}
    )
    for name, kind in expected_types.items():
        # prometheus_client names a counter's family without `_total` in TYPE lines.
        found = exported.get(name) or exported.get(name.removesuffix("_total"))
        assert found == kind, f"{name}: exported as {found!r}"
