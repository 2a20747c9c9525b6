#!/usr/bin/env python3
"""Writes deploy/k8s/monitoring/prometheusrule.yaml from deploy/prometheus/notify-rules.yaml.

The rule file's `groups:` block becomes the PrometheusRule's `spec` verbatim (indented,
comments and all), so the two can never disagree. `--check` only compares and exits 1
when the PrometheusRule is out of date (tests/deploy runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "notify-rules.yaml"
TARGET = ROOT / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/notify-rules.yaml by scripts/render-prometheusrule.py:
# edit that file and re-run the script (a test fails while the two differ).
#
# For clusters running the Prometheus Operator: `kubectl apply -k deploy/k8s/monitoring`
# (kept out of deploy/k8s/kustomization.yaml: without the operator's CRD the kind is
# unknown and the whole apply would fail). Add the label your Prometheus'
# `ruleSelector` matches (kube-prometheus-stack: `release: <its release name>`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: notify
  namespace: notify
  labels:
    app.kubernetes.io/name: notify
    app.kubernetes.io/component: alerting
spec:
"""


def render() -> str:
    lines = RULES.read_text().splitlines()
    start = lines.index("groups:")
    body = [f"  {line}" if line else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main(argv: list[str]) -> int:
    rendered = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != rendered:
            print(
                f"{TARGET.relative_to(ROOT)} is out of date: run scripts/render-prometheusrule.py"
            )
            return 1
        return 0
    TARGET.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
