"""A real Prometheus (Debian's package) as a child process: its own config and
storage in a temp folder, a free port, scraping and evaluating every second."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped, unused-ignore]

from tests.support import child_process

from .conftest import free_port
from .prometheus import find_binary

# Scrape and evaluate every second: an alert's state follows the service within a
# few seconds (the shipped config of a real deployment would use 15-30 s).
INTERVAL = "1s"


class PrometheusServer:
    def __init__(self, scrape_target: str, rules: Path) -> None:
        self.binary = find_binary("prometheus")
        self.dir = Path(tempfile.mkdtemp(prefix="notify-prometheus-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": INTERVAL,
                        "scrape_timeout": INTERVAL,
                        "evaluation_interval": INTERVAL,
                    },
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {"job_name": "notify", "static_configs": [{"targets": [scrape_target]}]}
                    ],
                }
            )
        )
        self.log_path = self.dir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> PrometheusServer:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        child_process.wait_ready(
            self.proc,
            f"{self.base_url}/-/ready",
            name="prometheus",
            timeout_s=timeout_s,
            log=self.log_path.read_text,
        )
        return self

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.base_url}/api/v1/{path}", params=params, timeout=5)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def alert_rule(self, name: str) -> dict[str, Any]:
        """The rule as /api/v1/rules reports it: state and active alerts."""
        for group in self.api("rules", type="alert")["groups"]:
            for rule in group["rules"]:
                if rule["name"] == name:
                    found: dict[str, Any] = rule
                    return found
        raise AssertionError(f"prometheus has no alert rule {name}")

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.api("alerts")["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    def stop(self) -> None:
        child_process.stop(self.proc, timeout_s=15)
        shutil.rmtree(self.dir, ignore_errors=True)
