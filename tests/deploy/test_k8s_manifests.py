"""deploy/k8s: strict schema validation, and the numbers that must agree with each
other and with the service's settings (probes, grace, drain, ALB, Redis budget)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from pydantic import ValidationError

from service.config import Settings

from .manifests import (
    K8S_DIR,
    alb_attributes,
    config_env,
    container,
    deployed_settings,
    k8s,
    k8s_documents,
    pod_spec,
)

try:
    import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # pragma: no cover - the failure message is the point
    kubernetes_validate = None

# The oldest Kubernetes the manifests support (preStop `sleep` action: 1.30;
# matchLabelKeys in topology spread: 1.27) and the newest schema the package ships.
KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]
# Margin between uvicorn's forced shutdown and Kubernetes' SIGKILL: the listener
# stops, the pool closes, the interpreter exits.
EXIT_MARGIN_S = 5
# uvicorn's timeout_graceful_shutdown = NOTIFY_SHUTDOWN_GRACE_S + this (service/cli.py).
UVICORN_EXTRA_S = 2
# This service's share of Redis' `maxclients` (10000 by default).
REDIS_CONNECTION_BUDGET = 1000


def validator() -> Any:
    if kubernetes_validate is None:
        pytest.fail(
            "kubernetes-validate not installed: `pip install kubernetes-validate`", pytrace=False
        )
    return kubernetes_validate


def prestop_s() -> int:
    seconds: int = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    return seconds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name_doc", k8s_documents(), ids=[f"{n}:{d['kind']}" for n, d in k8s_documents()]
)
def test_manifest_passes_strict_schema_validation(
    name_doc: tuple[str, dict[str, Any]], version: str
) -> None:
    _, doc = name_doc
    validator().validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """Negative control: a misspelt field fails (without strict it would be dropped)."""
    doc = copy.deepcopy(k8s("Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(validator().ValidationError):
        validator().validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_probes_split_liveness_from_readiness() -> None:
    c = container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/live"
    ports = {p["name"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports


def test_grace_period_covers_prestop_drain_and_margin() -> None:
    settings = deployed_settings()
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert prestop_s() >= 5
    assert grace >= prestop_s() + settings.shutdown_grace_s + UVICORN_EXTRA_S + EXIT_MARGIN_S


def test_rollout_never_lowers_capacity() -> None:
    strategy = k8s("Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] in (1, "1")
    # The HPA owns the replica count.
    assert "replicas" not in k8s("Deployment")["spec"]


def test_restricted_security_context() -> None:
    pod = pod_spec()["securityContext"]
    ctr = container()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int)
    assert pod["runAsUser"] >= 10000
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctr["allowPrivilegeEscalation"] is False
    assert ctr["readOnlyRootFilesystem"] is True
    assert ctr["capabilities"] == {"drop": ["ALL"]}
    assert ctr.get("runAsUser", pod["runAsUser"]) == pod["runAsUser"]
    assert pod_spec()["automountServiceAccountToken"] is False
    namespace = k8s("Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_service_links_cannot_shadow_our_settings() -> None:
    # A Service named "notify" would inject NOTIFY_PORT=tcp://... into the pod.
    assert pod_spec()["enableServiceLinks"] is False


def test_topology_spread_over_zones_and_nodes() -> None:
    constraints = pod_spec()["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()


def test_memory_is_guaranteed_and_sized_for_max_connections() -> None:
    resources = container()["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    limit_mib = int(re.fullmatch(r"(\d+)Mi", resources["limits"]["memory"]).group(1))  # type: ignore[union-attr]
    # The numbers measured and written next to `resources` in deployment.yaml.
    text = (K8S_DIR / "deployment.yaml").read_text()
    base = float(re.search(r"baseline RSS ([\d.]+) MiB", text).group(1))  # type: ignore[union-attr]
    per_conn = float(re.search(r"([\d.]+) KiB per open stream", text).group(1))  # type: ignore[union-attr]
    max_connections = deployed_settings().max_connections
    needed_mib = base + max_connections * per_conn / 1024
    assert limit_mib >= 1.25 * needed_mib, (limit_mib, needed_mib)


def test_selectors_and_ports_line_up() -> None:
    labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert k8s("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert k8s("Service")["spec"]["selector"].items() <= labels.items()
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"] for p in container()["ports"]}
    (svc_port,) = k8s("Service")["spec"]["ports"]
    assert svc_port["targetPort"] in container_ports
    assert int(container()["ports"][0]["containerPort"]) == deployed_settings().port
    for rule in k8s("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == k8s("Service")["metadata"]["name"]
            assert backend["port"]["name"] == svc_port["name"]
    target = k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "notify")
    assert pod_spec()["serviceAccountName"] == k8s("ServiceAccount")["metadata"]["name"]
    policy = k8s("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    (allowed,) = policy["ingress"]
    assert [p["port"] for p in allowed["ports"]] == [svc_port["targetPort"]]


def test_ingress_is_an_alb_with_stream_friendly_settings() -> None:
    ingress = k8s("Ingress")
    annotations = ingress["metadata"]["annotations"]
    settings = deployed_settings()
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/health/ready"
    idle = int(alb_attributes("load-balancer-attributes")["idle_timeout.timeout_seconds"])
    # Real bytes (heartbeats, pings) must cross the ALB well within its idle timeout.
    assert idle >= 3 * settings.heartbeat_s
    assert idle > settings.ws_ping_interval_s
    # ...and the ALB, not uvicorn, closes idle keep-alive connections.
    assert idle < settings.keepalive_timeout_s
    delay = int(alb_attributes("target-group-attributes")["deregistration_delay.timeout_seconds"])
    # The ALB keeps the draining pod's streams until the drain is over, and lets
    # go before Kubernetes kills the pod.
    assert delay >= prestop_s() + settings.shutdown_grace_s
    assert delay < pod_spec()["terminationGracePeriodSeconds"]
    # Only /v1 is public: no /metrics, no /health through the ALB.
    paths = [p["path"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/v1"]


def test_hpa_scales_in_slowly() -> None:
    spec = k8s("HorizontalPodAutoscaler")["spec"]
    assert spec["minReplicas"] >= 2
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600
    pdb = k8s("PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1
    assert spec["minReplicas"] > pdb["maxUnavailable"]


def test_redis_pool_budget_is_documented_and_respected() -> None:
    settings = deployed_settings()
    max_pods = k8s("HorizontalPodAutoscaler")["spec"]["maxReplicas"] + int(
        k8s("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    )
    total = settings.redis_max_connections * settings.workers * max_pods
    assert total <= REDIS_CONNECTION_BUDGET
    # The sum written in the ConfigMap's comment is the one the manifests give.
    text = (K8S_DIR / "configmap.yaml").read_text()
    assert f"= {total} connections" in text


def test_configmap_and_secret_hold_only_known_settings() -> None:
    env = config_env()
    known = {f"NOTIFY_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    # The same settings, in production, are accepted (fail fast, not in a pod).
    settings = deployed_settings()
    assert settings.env == "production"
    assert settings.workers == 1
    assert settings.host == "0.0.0.0"


def test_production_refuses_the_development_defaults() -> None:
    """Negative control for the check above: production validation is really on."""
    with pytest.raises(ValidationError):
        deployed_settings(NOTIFY_REDIS_URL="memory://")


def test_secret_holds_placeholders_only() -> None:
    secret = k8s("Secret")
    assert "data" not in secret, "no base64 values: nothing real is committed"
    for key, value in secret["stringData"].items():
        assert "CHANGE_ME" in value, key
