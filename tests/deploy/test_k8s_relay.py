"""deploy/k8s/relay.yaml: the outbox relay's own Deployment. Its pods are never
selected by the API's Service, PDB, HPA or NetworkPolicy; its settings are the
API's plus the outbox's, valid in production; its probes and command exist."""

from __future__ import annotations

from typing import Any

from service.cli import build_parser
from service.config import Settings

from .manifests import config_env, k8s


def relay_pod() -> dict[str, Any]:
    spec: dict[str, Any] = k8s("Deployment", "notify-relay")["spec"]["template"]["spec"]
    return spec


def relay_container() -> dict[str, Any]:
    (only,) = relay_pod()["containers"]
    assert isinstance(only, dict)
    return only


def relay_settings() -> Settings:
    """Settings as the relay pod sees them: envFrom in order, then `env`."""
    env = config_env() | k8s("Secret", "notify-outbox")["stringData"]
    env |= {item["name"]: item["value"] for item in relay_container()["env"]}
    return Settings.model_validate({k.removeprefix("NOTIFY_").lower(): v for k, v in env.items()})


def test_relay_runs_notify_relay_with_the_api_settings_and_its_dsn() -> None:
    ctr = relay_container()
    assert ctr["args"] == ["notify", "relay"]
    assert build_parser().parse_args(ctr["args"][1:]).command == "relay"
    refs = [
        source.get("configMapRef", source.get("secretRef"))["name"] for source in ctr["envFrom"]
    ]
    assert refs == ["notify", "notify", "notify-outbox"]
    settings = relay_settings()
    assert settings.env == "production"
    assert settings.outbox_dsn is not None
    assert settings.outbox_dsn.get_secret_value().startswith("postgresql://")
    assert "CHANGE_ME" in settings.outbox_dsn.get_secret_value()
    assert int(ctr["ports"][0]["containerPort"]) == settings.port


def test_relay_probes_split_liveness_from_readiness() -> None:
    ctr = relay_container()
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert ctr["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    ports = {p["name"] for p in ctr["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ctr[probe]["httpGet"]["port"] in ports


def test_relay_pods_are_not_selected_by_the_api_objects() -> None:
    relay_labels = k8s("Deployment", "notify-relay")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        k8s("Deployment")["spec"]["selector"]["matchLabels"],
        k8s("Service")["spec"]["selector"],
        k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        k8s("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ):
        assert not selector.items() <= relay_labels.items(), selector
    own = k8s("Deployment", "notify-relay")["spec"]["selector"]["matchLabels"]
    assert own.items() <= relay_labels.items()
    policy = k8s("NetworkPolicy", "notify-relay")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= relay_labels.items()
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule.get("ports", [])}
    assert {5432, 6379} <= egress_ports


def test_relay_security_matches_the_api() -> None:
    pod = relay_pod()
    ctr = relay_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["resources"]["requests"]["memory"] == ctr["resources"]["limits"]["memory"]
