"""Readers for the shipped deploy files (Kubernetes manifests, nginx durations), so
that the tests compare the numbers the files really contain."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"


@cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every manifest listed in the kustomization."""
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    docs: list[tuple[str, dict[str, Any]]] = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / name).read_text()):
            if doc:
                docs.append((name, doc))
    return tuple(docs)


def k8s(kind: str, name: str = "notify") -> dict[str, Any]:
    found = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, got {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    assert isinstance(only, dict)
    return only


def config_env() -> dict[str, str]:
    """NOTIFY_ variables as the pod sees them: ConfigMap, then Secret (envFrom order)."""
    env: dict[str, str] = dict(k8s("ConfigMap")["data"])
    env.update(k8s("Secret")["stringData"])
    return env


def deployed_settings(**override: str) -> Settings:
    """The service's settings as the pod gets them (ConfigMap + Secret, production)."""
    env = config_env() | override
    return Settings.model_validate({k.removeprefix("NOTIFY_").lower(): v for k, v in env.items()})


def alb_attributes(annotation: str) -> dict[str, str]:
    """`a=b,c=d` ALB attribute annotations as a dict."""
    value: str = k8s("Ingress")["metadata"]["annotations"][
        f"alb.ingress.kubernetes.io/{annotation}"
    ]
    return dict(item.split("=", 1) for item in value.split(","))


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def nginx_seconds(value: str) -> float:
    """nginx time syntax: '90s', '1m30s', '500ms', '75' (seconds)."""
    if value.isdigit():
        return float(value)
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", value)
    assert "".join(n + u for n, u in parts) == value, f"not an nginx time: {value}"
    return sum(float(n) * _UNITS[u] for n, u in parts)
