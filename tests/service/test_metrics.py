"""Metrics: the model label, device memory read at scrape time, latency, and the README's metric table."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fake_engine import BODY, app_with_fake_engine

from service.metrics import Metrics
from service.settings import Settings


def _samples(metrics: Metrics, name: str) -> dict[tuple, float]:
    """{sorted label items: value} of one sample name."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_model_name_is_bound_once_per_app():
    """Model metrics carry model_name first in the table and get it from the Metrics object, so call sites
    pass only their own labels; HTTP, cache and Redis metrics have none."""
    from service.metrics import METRICS, MODEL

    assert all(MODEL not in labels[1:] for *_, labels, _ in METRICS)  # first or absent
    model = {name for _, _, name, _, labels, _ in METRICS if labels[:1] == [MODEL]}
    assert {"pcgen_request_finish_reason", "pcgen_request_prompt_tokens", "pcgen_request_generation_tokens",
            "pcgen_e2e_request_latency_seconds", "pcgen_queue_depth", "pcgen_generated_tokens",
            "pcgen_constraint_outcomes", "pcgen_constraint_errors", "pcgen_dfa_states"} <= model  # fmt: skip
    assert not model & {"pcgen_requests", "pcgen_request_duration_seconds", "pcgen_rejected_requests",
                        "pcgen_cache_hits", "pcgen_redis_up"}  # fmt: skip
    metrics = Metrics("served-name")
    metrics.finish_reasons.labels("eos").inc()
    metrics.finish_reasons.labels(finish_reason="length").inc(2)
    metrics.prompt_length.observe(7)
    metrics.queue_depth.set(3)
    metrics.requests.labels("/generate", "200").inc()
    assert _samples(metrics, "pcgen_request_finish_reason_total") == {
        (("finish_reason", "eos"), ("model_name", "served-name")): 1.0,
        (("finish_reason", "length"), ("model_name", "served-name")): 2.0,
    }
    assert _samples(metrics, "pcgen_request_prompt_tokens_sum") == {(("model_name", "served-name"),): 7.0}
    assert _samples(metrics, "pcgen_queue_depth") == {(("model_name", "served-name"),): 3.0}
    assert _samples(metrics, "pcgen_requests_total") == {(("route", "/generate"), ("status", "200")): 1.0}
    # series without other labels exist from the start, at zero
    zero = {(("model_name", "served-name"),): 0.0}
    assert _samples(metrics, "pcgen_request_generation_tokens_count") == zero


def test_the_app_labels_its_metrics_with_the_served_model():
    from service.app import create_app

    app = create_app(Settings(hmm="unused", lm="some/lm", model_name="public-name"), load=False)
    assert app.state.runtime.metrics.model_name == "public-name"
    app = create_app(Settings(hmm="unused", lm="some/lm"), load=False)
    assert app.state.runtime.metrics.model_name == "some/lm"


def test_device_memory_is_read_at_scrape_time_from_cuda_devices_only():
    memory = {"allocated": 1.0, "reserved": 2.0, "free": 30.0, "total": 40.0}
    reads: list[str] = []

    def read(device: str) -> dict[str, float]:
        reads.append(device)
        if device == "cuda:1":
            raise RuntimeError("device lost")
        return dict(memory)

    metrics = Metrics("m")
    metrics.devices.read = read
    assert metrics.devices.watch("cpu") is False and metrics.devices.watch("mps") is False
    text = metrics.render().decode()
    assert "# TYPE pcgen_device_memory_bytes gauge" in text and "pcgen_device_memory_bytes{" not in text
    assert reads == []  # nothing watched on CPU: no series, no reads
    assert all(metrics.devices.watch(device) for device in ("cuda:0", "cuda:1", "cuda:0"))
    assert metrics.devices.devices == ["cuda:0", "cuda:1"]
    expected = {(("device", "cuda:0"), ("kind", kind), ("model_name", "m")): v for kind, v in memory.items()}
    assert _samples(metrics, "pcgen_device_memory_bytes") == expected  # the failing device is left out
    memory["allocated"] = 5.0  # read again at the next scrape
    assert _samples(metrics, "pcgen_device_memory_bytes")[(("device", "cuda:0"), ("kind", "allocated"),
                                                           ("model_name", "m"))] == 5.0  # fmt: skip
    assert reads.count("cuda:0") == 2 and reads.count("cuda:1") == 2


def test_cuda_memory_reads_torch_cuda(monkeypatch):
    import torch

    from service.metrics import cuda_memory

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: calls.append(("info", i)) or (100, 1000))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: calls.append(("alloc", i)) or 10)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i: calls.append(("reserved", i)) or 20)
    assert cuda_memory("cuda:1") == {"allocated": 10.0, "reserved": 20.0, "free": 100.0, "total": 1000.0}
    assert {index for _, index in calls} == {1}
    calls.clear()
    cuda_memory("cuda")  # no index: the current device
    assert {index for _, index in calls} == {3}


def test_e2e_latency_counts_generation_requests_only():
    """pcgen_e2e_request_latency_seconds: computed and cached answers (streamed too) under cached=false|true,
    each its response's timings.total_ms; probes, /metrics and refused requests never."""
    app, runtime, engine = app_with_fake_engine(0.05)

    async def run():
        await runtime.start(load=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = (await client.post("/generate", json=BODY)).json()
            again = (await client.post("/generate", json=BODY)).json()
            streamed = await client.post("/generate", json={**BODY, "stream": True})
            for path in ("/health/live", "/health/ready", "/metrics"):
                await client.get(path)
            assert (await client.post("/generate", json={"keywords": []})).status_code == 422
        return first, again, streamed

    first, again, streamed = asyncio.run(run())
    assert first["cached"] is False and again["cached"] is True and "event: result" in streamed.text
    counts = _samples(runtime.metrics, "pcgen_e2e_request_latency_seconds_count")
    assert counts == {(("cached", "false"), ("model_name", "gpt2-large")): 1.0,
                      (("cached", "true"), ("model_name", "gpt2-large")): 2.0}  # fmt: skip
    computed = _samples(runtime.metrics, "pcgen_e2e_request_latency_seconds_sum")
    assert computed[(("cached", "false"), ("model_name", "gpt2-large"))] == pytest.approx(
        first["timings"]["total_ms"] / 1000
    )


def test_the_readme_lists_every_metric_with_its_labels():
    """service/README.md's metrics table: each exported name with its labels, in backticks."""
    from pathlib import Path

    from service.metrics import DEVICE_MEMORY, METRICS

    readme = (Path(__file__).resolve().parents[2] / "service" / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    suffix = {"Counter": "_total"}
    declared = [(name + suffix.get(kind.__name__, ""), labels) for _, kind, name, _, labels, _ in METRICS]
    declared += [("pcgen_cache_bytes", ["cache"]), ("pcgen_cache_entries", ["cache"]), ("pcgen_cache_evictions_total", ["cache"]),
                 (DEVICE_MEMORY, ["model_name", "device", "kind"]),
                 ("pcgen_model_info", ["lm", "hmm", "hmm_hidden_size", "vocab_size", "device", "dtype"])]  # fmt: skip
    for name, labels in declared:
        rows = [line for line in section.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"{name}: {len(rows)} rows in the README's metrics table"
        cell = rows[0].split("|")[2]
        assert {label.strip(" `") for label in cell.split(",") if label.strip(" `-")} == set(labels), name
