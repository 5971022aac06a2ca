"""A real Prometheus server (the Debian package) scrapes the service on loopback and sees pcgen_requests_total."""

from __future__ import annotations

import shutil
import subprocess
import time

import httpx
import pytest
from service_support import free_port


def test_prometheus_scrapes_the_service(server, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (CI installs it: apt-get install prometheus)")
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: pcgen\n"
        "    scrape_interval: 1s\n"
        "    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    with server.client() as client:
        assert (
            client.post(
                "/generate", json={"prompt": "The", "keywords": ["sky"], "max_new_tokens": 6}
            ).status_code
            == 200
        )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": "pcgen_requests_total"},
                    timeout=5,
                )
                if r.status_code == 200:
                    result = r.json()["data"]["result"]
                    if result:
                        break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert result, (
            "Prometheus never saw pcgen_requests_total:\n" + (tmp_path / "prometheus.log").read_text()[-3000:]
        )
        routes = {sample["metric"].get("route") for sample in result}
        assert "/generate" in routes
        assert all(sample["metric"]["job"] == "pcgen" for sample in result)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
