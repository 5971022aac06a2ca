"""Kubernetes manifests (deploy/k8s), checked without a cluster: `kubectl kustomize` renders the base and each
overlay, and the rendered objects are checked against the CLI, the settings and the metrics the service
exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["gpu", "prometheus-operator"]


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomizations: kubectl kustomize)")
    run = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in objects if o["kind"] == kind])
    return found[0]


def api_container(objects: list[dict]) -> dict:
    deployment = one(objects, "Deployment", "pcgen-api")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "api"]
    return container


def config(objects: list[dict]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return match


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S)


def test_base_renders_the_expected_objects(base):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base if o["kind"] != "ConfigMap")
    assert kinds == [
        ("Deployment", "pcgen-api"),
        ("Deployment", "pcgen-redis"),
        ("HorizontalPodAutoscaler", "pcgen-api"),
        ("Service", "pcgen-api"),
        ("Service", "pcgen-redis"),
    ]
    assert one(base, "ConfigMap")["metadata"]["name"].startswith("pcgen-config")
    assert not [o for o in base if o["kind"] == "Secret"], (
        "API keys must not be committed: a Secret is created"
    )
    assert render(K8S / "base") == base  # deploy/k8s is the base


def test_api_runs_pcgen_serve_from_the_image(base):
    from pcgen.cli import build_parser

    container = api_container(base)
    assert container["image"] == "pcgen:latest"
    assert "command" not in container, "keep the image's `pcgen` entrypoint"
    args = build_parser().parse_args(
        container["args"]
    )  # exits (fails the test) on an unknown command or flag
    assert args.command == "serve"


def test_api_probes(base):
    container = api_container(base)
    live, ready, startup = (container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe"))
    assert live["httpGet"]["path"] == "/health/live"
    assert ready["httpGet"]["path"] == "/health/ready" and ready["timeoutSeconds"] == 1
    assert startup["httpGet"]["path"] == "/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "model download needs minutes"
    api_port = int(config(base)["PCGEN_PORT"])
    for probe in (live, ready, startup):
        assert port_number(container, probe["httpGet"]["port"]) == api_port


def test_api_settings_come_from_the_configmap_and_the_keys_from_a_secret(base):
    from service.settings import Settings, env_name

    container = api_container(base)
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == one(base, "ConfigMap")["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    keys = env["PCGEN_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert keys["name"] == "pcgen-api-keys" and keys["key"] == "PCGEN_API_KEYS" and not keys.get("optional")
    assert env["HF_HOME"]["value"] == "/data/hf"

    known = {env_name(field) for field in Settings.model_fields}
    used = set()
    for objects in [base] + [render(K8S / "overlays" / name) for name in OVERLAYS]:
        used |= set(config(objects)) | {e["name"] for e in api_container(objects)["env"]}
    used = {name for name in used if name.startswith("PCGEN_")}
    assert {"PCGEN_LM", "PCGEN_HMM", "PCGEN_REDIS_URL", "PCGEN_METRICS_PORT", "PCGEN_API_KEYS"} <= used
    assert used <= known, f"not settings: {sorted(used - known)}"
    settings = Settings(**{k.removeprefix("PCGEN_").lower(): v for k, v in config(base).items()})
    assert settings.host == "0.0.0.0" and settings.metrics_port not in (None, settings.port)

    # PCGEN_<SERVICE>_PORT=tcp://... service links would collide with the settings' namespace
    assert one(base, "Deployment", "pcgen-api")["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_api_ports_scrape_annotations_and_service(base):
    container = api_container(base)
    data = config(base)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(data["PCGEN_PORT"]), "metrics": int(data["PCGEN_METRICS_PORT"])}
    pod = one(base, "Deployment", "pcgen-api")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == data["PCGEN_METRICS_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert data["PCGEN_METRICS_PORT"] == compose["services"]["api"]["environment"]["PCGEN_METRICS_PORT"]

    service = one(base, "Service", "pcgen-api")
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert [port_number(container, p["targetPort"]) for p in service["spec"]["ports"]] == [ports["http"]]
    deployment = one(base, "Deployment", "pcgen-api")
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])


def test_api_security_resources_and_model_cache(base):
    pod = one(base, "Deployment", "pcgen-api")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    container = api_container(base)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
        assert "nvidia.com/gpu" not in resources[kind], "the base is CPU; the GPU is in overlays/gpu"
    assert config(base)["PCGEN_DEVICE"] == "cpu"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/data/hf"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_replicas_share_the_redis_service(base):
    deployment = one(base, "Deployment", "pcgen-api")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    url = config(base)["PCGEN_REDIS_URL"]
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url)
    assert match, url
    service = one(base, "Service", match.group(1))
    redis = one(base, "Deployment", "pcgen-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == int(match.group(2)) and port_number(container, port["targetPort"]) == 6379
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    args = container["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "allkeys-lru" and "--maxmemory" in args
    assert args[args.index("--appendonly") + 1] == "no" and args[args.index("--save") + 1] == ""
    assert container["resources"]["limits"]["memory"]
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_hpa_scales_the_api_on_the_exported_queue_depth_gauge(base):
    from service.metrics import Metrics

    hpa = one(base, "HorizontalPodAutoscaler", "pcgen-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "pcgen-api")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    gauges = {m.name for m in Metrics().registry.collect() if m.type == "gauge"}
    assert name == "pcgen_queue_depth" and name in gauges
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # the prometheus-adapter rule that serves it through the custom metrics API
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # one value per pod whatever other labels the gauge carries (model_name)
    query = r"max\(<<\.Series>>\{<<\.LabelMatchers>>\}\) by \(<<\.GroupBy>>\)"
    assert re.fullmatch(query, rule["metricsQuery"])
    labels = {tuple(s.labels) for m in Metrics("m").registry.collect() if m.name == name for s in m.samples}
    assert labels == {("model_name",)}
    assert "prometheus-adapter" in (K8S / "base" / "api-hpa.yaml").read_text()


def test_gpu_overlay():
    objects = render(K8S / "overlays" / "gpu")
    container = api_container(objects)
    for kind in ("requests", "limits"):
        assert str(container["resources"][kind]["nvidia.com/gpu"]) == "1"
    assert config(objects)["PCGEN_DEVICE"] == "cuda"
    pod = one(objects, "Deployment", "pcgen-api")["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]
    # everything else as in the base
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["readinessProbe"]["timeoutSeconds"] == 1


def test_prometheus_operator_overlay():
    objects = render(K8S / "overlays" / "prometheus-operator")
    monitor = one(objects, "ServiceMonitor", "pcgen-api")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    services = [s for s in objects if s["kind"] == "Service"]
    (metrics_service,) = [
        s for s in services if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    (port,) = [p for p in metrics_service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container = api_container(objects)
    assert port_number(container, port["targetPort"]) == int(config(objects)["PCGEN_METRICS_PORT"])
    assert endpoint["path"] == "/metrics"
    pod = one(objects, "Deployment", "pcgen-api")["spec"]["template"]
    assert selects(metrics_service["spec"]["selector"], pod["metadata"]["labels"])
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "false"  # not scraped twice
    # the API Service still carries only the API port
    api_service = one(objects, "Service", "pcgen-api")
    assert [p["name"] for p in api_service["spec"]["ports"]] == ["http"]
