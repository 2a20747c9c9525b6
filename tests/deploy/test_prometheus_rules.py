"""deploy/prometheus: the alert rules pass `promtool check rules`, their unit tests
pass `promtool test rules`, every alert has a test that fires it and one that keeps
it quiet, and the PrometheusRule for the Operator holds exactly the same rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped, unused-ignore]

from .manifests import K8S_DIR, config_env
from .prometheus import (
    METRICS,
    PROMETHEUS_RULE,
    RENDER_SCRIPT,
    RULE_TESTS,
    RULES,
    RUNBOOK,
    alert,
    alerts,
    fast_rules,
    find_binary,
    metric_names,
    rule_groups,
    rule_metrics,
    runbook_anchors,
    unit_tests,
)

RUNBOOK_PREFIX = "https://git.example.com/notify/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning"}
# Label values an annotation may print: pods, transports, causes; never anything
# that could name a patient, an appointment or an event.
PRINTABLE_LABELS = {"pod", "namespace", "transport", "cause", "reason", "operation", "task"}
# Template actions allowed in annotations: a label, or the value, formatted.
TEMPLATE_ACTION = re.compile(
    r" (\$labels\.\w+|\$value|\$value \| (humanize|humanizeDuration|printf `%\.[02]f`)) "
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_quiet_tests_fail_against_rules_that_always_fire(tmp_path: Path) -> None:
    """Negative control: the same unit tests against rules whose every expression
    is always true must fail (a quiet test that cannot fail proves nothing)."""
    groups = [
        {**g, "rules": [{**r, "expr": "vector(1)", "for": "0s"} for r in g["rules"]]}
        for g in rule_groups()
    ]
    (tmp_path / "notify-rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    (tmp_path / "tests.yaml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(tmp_path / "tests.yaml"))
    assert result.returncode != 0
    quiet = sum(
        1 for t in unit_tests() for case in t["alert_rule_test"] if not case.get("exp_alerts")
    )
    failed_quiet = len(re.findall(r"exp:\[\s*\]", result.stdout + result.stderr))
    assert failed_quiet == quiet, result.stdout[-3000:]


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in unit_tests():
        for case in test["alert_rule_test"]:
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert len(names) == len(alerts()), "duplicate alert names"
    assert names - fires == set(), "alerts without a firing test"
    assert names - quiet == set(), "alerts without a quiet test"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_has_severity_summary_description_and_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_PREFIX), name
        assert url.removeprefix(RUNBOOK_PREFIX) == name.lower(), name
        assert name.lower() in anchors, f"docs/runbook.md has no section {name}"


def test_every_runbook_alert_section_is_an_alert() -> None:
    sections = set(re.findall(r"^### (Notify\w+)$", RUNBOOK.read_text(), re.M))
    assert sections == {a["alert"] for a in alerts()}


def test_the_runbook_inhibit_rules_name_existing_alerts_and_labels() -> None:
    (block,) = re.findall(r"```yaml\n(inhibit_rules:.*?)```", RUNBOOK.read_text(), re.S)
    names = {a["alert"] for a in alerts()}
    for rule in yaml.safe_load(block)["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            pattern = re.fullmatch(r'alertname=~?"([\w|]+)"', matcher)
            assert pattern, matcher
            assert set(pattern.group(1).split("|")) <= names, matcher
        assert set(rule["equal"]) <= {"namespace", "pod"}


def test_annotations_print_only_labels_without_patient_data() -> None:
    for rule in alerts():
        for text in rule["annotations"].values():
            printed = set(re.findall(r"\$labels\.(\w+)", text))
            assert printed <= PRINTABLE_LABELS, (rule["alert"], printed - PRINTABLE_LABELS)
            for action in re.findall(r"\{\{(.*?)\}\}", text):
                assert re.fullmatch(TEMPLATE_ACTION, action), (rule["alert"], action)


def test_every_threshold_has_a_comment_giving_its_reason() -> None:
    """In the file's text: comment lines between `- alert:` and `expr:`."""
    text = RULES.read_text()
    for rule in alerts():
        block = re.search(rf"- alert: {rule['alert']}\n((?:\s+#.*\n)+)\s+expr:", text)
        assert block, f"{rule['alert']}: no comment before its expr"
        assert len(block.group(1).splitlines()) >= 2, rule["alert"]


def test_the_prometheusrule_holds_exactly_the_rules_file() -> None:
    result = subprocess.run(
        [sys.executable, str(RENDER_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    doc = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["spec"] == yaml.safe_load(RULES.read_text())
    kustomization = yaml.safe_load((PROMETHEUS_RULE.parent / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [PROMETHEUS_RULE.name]
    assert kustomization["namespace"] == doc["metadata"]["namespace"]


def test_the_near_limit_threshold_is_80_percent_of_the_deployed_limit() -> None:
    limit = int(config_env()["NOTIFY_MAX_CONNECTIONS"])
    rule = alert("NotifyOpenStreamsNearLimit")
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    assert threshold == 0.8 * limit
    assert f"limit of {limit}" in rule["annotations"]["summary"]


def test_pod_alerts_select_the_deployed_namespace() -> None:
    namespace = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]
    assert f'namespace="{namespace}"' in alert("NotifyPodNotReady")["expr"]


def test_the_live_test_transform_changes_only_for_durations(tmp_path: Path) -> None:
    fast = yaml.safe_load(fast_rules(tmp_path / "rules.yaml", "2s").read_text())
    shipped = [r for g in rule_groups() for r in g["rules"]]
    loaded = [r for g in fast["groups"] for r in g["rules"]]
    assert loaded == [{**r, "for": "2s"} if "for" in r else r for r in shipped]
    assert any("for" not in r for r in shipped)


def test_every_metric_an_alert_uses_is_known() -> None:
    """A misspelt metric would make its alert silently never fire."""
    assert rule_metrics() - METRICS.keys() == set()


def test_metric_names_are_read_from_expressions() -> None:
    expr = alert("NotifyDeliveryLatencyHigh")["expr"]
    assert metric_names(expr) == {"notify_delivery_latency_seconds_bucket"}
    assert metric_names(alert("NotifySlowConsumersHigh")["expr"]) == {
        "notify_slow_consumers_total",
        "notify_open_streams",
    }
