"""A real Prometheus server (the Debian package) scrapes the service on loopback and sees pcgen_requests_total
and the vLLM-style request metrics (model_name, finish reasons, prompt and generation lengths, end-to-end
latency); with API keys, compose's scrape job (docker/prometheus.yml) reaches the unauthenticated metrics
listener (PCGEN_METRICS_PORT) while /metrics on the API port stays behind the keys."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from response_text import metric_value, sse_events
from server_processes import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "metrics-key-0001"


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)")
    return binary


@contextlib.contextmanager
def running_prometheus(binary: str, config: Path, tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def query_until(port: int, proc: subprocess.Popen, query: str, tmp_path: Path, timeout: float = 60) -> list:
    """The first non-empty result of an instant query (empty after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    result: list = []
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5)
            if r.status_code == 200:
                result = r.json()["data"]["result"]
                if result:
                    break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return result


def test_prometheus_scrapes_the_service(server, tmp_path):
    binary = prometheus_binary()
    target = server.url.removeprefix("http://")
    config = scrape_config(tmp_path, target)
    with server.client() as client:
        assert (
            client.post(
                "/generate", json={"prompt": "The", "keywords": ["sky"], "max_new_tokens": 6}
            ).status_code
            == 200
        )
    with running_prometheus(binary, config, tmp_path) as (port, proc):
        result = query_until(port, proc, "pcgen_requests_total", tmp_path)
        assert result, (
            "Prometheus never saw pcgen_requests_total:\n" + (tmp_path / "prometheus.log").read_text()[-3000:]
        )
        routes = {sample["metric"].get("route") for sample in result}
        assert "/generate" in routes
        assert all(sample["metric"]["job"] == "pcgen" for sample in result)


def scrape_config(tmp_path: Path, target: str) -> Path:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pcgen\n"
        "    scrape_interval: 1s\n"
        "    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    return config


def values_by(result: list, label: str) -> dict[str, float]:
    return {sample["metric"].get(label, ""): float(sample["value"][1]) for sample in result}


def test_prometheus_sees_the_request_metrics_in_vllm_vocabulary(start_server, tmp_path):
    """A fresh server (served as `tiny-served`) answers computed, cached and streamed generations on both
    routes, a 422 and probes; Prometheus then holds: model_name on the model metrics (not on HTTP ones), finish
    reasons summing to the outputs returned, one prompt/generation length observation per computed request
    with the tokens of the responses' usage, end-to-end latency per generation request only (cache hits under
    cached="true"), inside the HTTP latency, and no device memory series on CPU. The warm-up is not counted."""
    from service.metrics import METRICS, MODEL

    binary = prometheus_binary()
    served = "tiny-served"
    server = start_server("vllm-vocabulary", PCGEN_MODEL_NAME=served)
    computed: list[dict] = []  # usage and finish reasons of the requests the model computed
    cached = 0
    with server.client() as client:
        beam = {"prompt": "The", "keywords": ["sky"], "max_new_tokens": 6, "num_beams": 2,
                "num_return_sequences": 2}  # fmt: skip
        sampled = {"prompt": "A dog", "keywords": ["park"], "max_new_tokens": 8, "do_sample": True,
                   "num_return_sequences": 3}  # fmt: skip
        for body in (beam, beam, sampled, {**sampled, "stream": True}, {**beam, "stream": True}):
            r = client.post("/generate", json=body)
            assert r.status_code == 200, r.text
            answer = sse_events(r.text)[-1][1] if body.get("stream") else r.json()
            if answer["cached"]:
                cached += 1
                continue
            reasons = [out["finish_reason"] for out in answer["outputs"]]
            computed.append({**answer["usage"], "reasons": reasons})
        body = {"prompt": "Birds", "keywords": ["lake"], "max_tokens": 7, "temperature": 0.8, "n": 2}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        openai = {"stop": "eos", "length": "length"}  # OpenAI's "stop" is EOS (or a stop string)
        reasons = [openai.get(c["finish_reason"], c["finish_reason"]) for c in r.json()["choices"]]
        computed.append({**r.json()["usage"], "reasons": reasons})
        r = client.post("/generate", json={"constraint": {"word_at": 0, "word": "x"}})
        assert r.status_code == 422
        for path in ("/health/live", "/health/ready", "/metrics"):
            assert client.get(path).status_code == 200
    assert cached == 2 and len(computed) == 4
    outputs = [reason for request in computed for reason in request["reasons"]]

    config = scrape_config(tmp_path, server.url.removeprefix("http://"))
    with running_prometheus(binary, config, tmp_path) as (port, proc):

        def query(expr: str) -> list:
            result = query_until(port, proc, expr, tmp_path)
            assert result, (
                f"Prometheus has nothing for {expr}:\n" + (tmp_path / "prometheus.log").read_text()[-3000:]
            )
            return result

        # model_name on every model metric, the served name (not the LM path); never on HTTP metrics
        labelled = query(f'count by (__name__) ({{__name__=~"pcgen_.+", {MODEL}="{served}"}})')
        names = {sample["metric"]["__name__"] for sample in labelled}
        suffix = {"Counter": "_total", "Histogram": "_count", "Gauge": ""}
        expected = {
            name + suffix[kind.__name__] for _, kind, name, _, labels, _ in METRICS if labels == [MODEL]
        }
        assert expected <= names, sorted(expected - names)
        assert {"pcgen_request_finish_reason_total", "pcgen_constraint_errors_total"} <= names
        assert not {
            n for n in names if n.startswith(("pcgen_requests", "pcgen_request_duration", "pcgen_cache"))
        }
        unlabelled = query(f'count by (__name__) ({{__name__=~"pcgen_.+", {MODEL}=""}})')
        assert "pcgen_requests_total" in {sample["metric"]["__name__"] for sample in unlabelled}

        # finish reasons: one per returned output of the computed requests
        reasons = query("pcgen_request_finish_reason_total")
        assert {sample["metric"][MODEL] for sample in reasons} == {served}
        counts = values_by(reasons, "finish_reason")
        assert sum(counts.values()) == len(outputs)
        assert {k: v for k, v in counts.items() if v} == {r: outputs.count(r) for r in set(outputs)}
        assert set(counts) <= {"eos", "stop", "length"}

        # prompt and generation lengths: one observation per computed request, the usage's tokens
        selector = f'{{{MODEL}="{served}"}}'
        prompt = query(f"pcgen_request_prompt_tokens_count{selector}")
        assert float(prompt[0]["value"][1]) == len(computed)
        total = float(query(f"pcgen_request_prompt_tokens_sum{selector}")[0]["value"][1])
        assert total == sum(request["prompt_tokens"] for request in computed)
        generation = query(f"pcgen_request_generation_tokens_count{selector}")
        assert float(generation[0]["value"][1]) == len(computed)
        total = float(query(f"pcgen_request_generation_tokens_sum{selector}")[0]["value"][1])
        assert total == sum(request["completion_tokens"] for request in computed)
        assert total == float(query(f"pcgen_generated_tokens_total{selector}")[0]["value"][1])
        buckets = f'pcgen_request_generation_tokens_bucket{{{MODEL}="{served}", le=~"1.0|50.0"}}'
        # every request generated 2-3 outputs of 1-8 tokens each
        assert values_by(query(buckets), "le") == {"1.0": 0, "50.0": len(computed)}

        # end-to-end latency: the generation requests that returned a result, nothing else (no probes,
        # /metrics or the 422), split by cache hits; in all within the HTTP latency of the generation routes
        e2e = values_by(query("pcgen_e2e_request_latency_seconds_count"), "cached")
        assert e2e == {"false": len(computed), "true": cached}
        e2e_sum = float(query("sum(pcgen_e2e_request_latency_seconds_sum)")[0]["value"][1])
        http = 'pcgen_request_duration_seconds_sum{route=~"/generate|/v1/completions"}'
        http_sum = float(query(f"sum({http})")[0]["value"][1])
        assert 0 < e2e_sum <= http_sum
        p50 = query(
            "histogram_quantile(0.5, sum by (le) (pcgen_e2e_request_latency_seconds_bucket"
            f'{{{MODEL}="{served}", cached="false"}}))'
        )
        assert 0 < float(p50[0]["value"][1]) <= 120  # within the request timeout

        # device memory: CUDA only
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "pcgen_device_memory_bytes"})
        assert r.json()["data"]["result"] == []


def test_compose_scrape_job_reaches_the_metrics_listener_with_api_keys(start_server, tmp_path):
    """API keys set, PCGEN_METRICS_PORT set: /metrics on the API port is 401 without a key, the listener
    serves the same registry without one, and docker/prometheus.yml's job (its DNS discovery replaced by a
    static loopback target on the listener) scrapes it with no credentials."""
    binary = prometheus_binary()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    config = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "pcgen-api")
    (discovery,) = job.pop("dns_sd_configs")
    assert discovery["names"] == ["api"]
    assert str(discovery["port"]) == compose["services"]["api"]["environment"]["PCGEN_METRICS_PORT"]
    assert not {"authorization", "basic_auth", "bearer_token", "bearer_token_file"} & set(job)

    metrics_port = free_port()
    server = start_server("metrics-listener", PCGEN_API_KEYS=KEY, PCGEN_METRICS_PORT=str(metrics_port))
    auth = {"Authorization": f"Bearer {KEY}"}
    with server.client() as client:
        r = client.get("/metrics")
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        body = {"prompt": "The", "keywords": ["sky"], "max_new_tokens": 6}
        assert client.post("/generate", json=body).status_code == 401
        assert client.post("/generate", json=body, headers=auth).status_code == 200
        main = client.get("/metrics", headers=auth)
        assert main.status_code == 200
    listener = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert listener.status_code == 200 and "pcgen_requests_total" in listener.text
    labels = {"route": "/generate", "status": "200"}  # the same registry behind both
    assert metric_value(listener.text, "pcgen_requests_total", labels) == 1
    assert metric_value(main.text, "pcgen_requests_total", labels) == 1
    assert metric_value(listener.text, "pcgen_rejected_requests_total", {"reason": "unauthorized"}) == 2

    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    job["scrape_interval"] = "1s"
    config["scrape_configs"] = [job]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    with running_prometheus(binary, config_file, tmp_path) as (port, proc):
        result = query_until(port, proc, 'pcgen_requests_total{route="/generate",status="200"}', tmp_path)
        assert result, (
            "Prometheus never saw pcgen_requests_total:\n" + (tmp_path / "prometheus.log").read_text()[-3000:]
        )
        assert {s["metric"]["job"] for s in result} == {"pcgen-api"}
        assert {s["metric"]["instance"] for s in result} == {f"127.0.0.1:{metrics_port}"}
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]
        (target,) = targets["activeTargets"]
        assert target["health"] == "up" and not target["lastError"], target


def _listening_on(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) of the IPv4 sockets listening on `port`."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(address)
    return found


def test_metrics_listener_follows_the_app_lifespan():
    """Started with the app on the host setting, serving the app's own registry; closed when the app stops
    (the port is free again)."""
    from service.app import create_app
    from service.settings import Settings

    port = free_port()
    app = create_app(Settings(hmm="unused", warmup=False, metrics_port=port), load=False)
    url = f"http://127.0.0.1:{port}/metrics"

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            r = await asyncio.to_thread(httpx.get, url, timeout=5)
            assert r.status_code == 200
            assert "# TYPE pcgen_requests_total counter" in r.text and "pcgen_redis_up -1.0" in r.text
            if Path("/proc/net/tcp").exists():
                assert _listening_on(port) == {"0100007F"}  # 127.0.0.1, the host setting, not 0.0.0.0
            app.state.runtime.metrics.generated_tokens.inc(7)  # the same registry, not a copy
            r = await asyncio.to_thread(httpx.get, url, timeout=5)
            assert metric_value(r.text, "pcgen_generated_tokens_total") == 7
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=2)

    asyncio.run(scenario())
    if Path("/proc/net/tcp").exists():
        assert not _listening_on(port)
    with socket.socket() as s:  # the port can be listened on again (TIME_WAIT from the client aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_metrics_listener_on_a_busy_port_stops_startup_with_a_clear_error():
    from service.app import create_app
    from service.settings import Settings

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app = create_app(Settings(hmm="unused", warmup=False, metrics_port=port), load=False)

        async def scenario() -> None:
            async with app.router.lifespan_context(app):
                pass

        with pytest.raises(
            RuntimeError, match=rf"PCGEN_METRICS_PORT / --metrics-port: .*127\.0\.0\.1:{port}"
        ):
            asyncio.run(scenario())
