"""In-process tests of the pieces: settings and flags, error paths, the cache, single-flight, deadlines and
disconnects (with a stand-in engine), and the real engine's cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

from pc_core.decoding import GenerationOutput, SequenceResult
from pc_core.params import DecodeParams
from service.cache import MemoryBackend, RedisHealth, ResponseCache, SingleFlight
from service.cli import BOOL_SETTINGS, VALUE_SETTINGS, build_parser, load_settings
from service.engine import Engine, Job
from service.errors import constraint_path_to_loc, loc_to_path
from service.generation import GenerationSpec
from service.metrics import Metrics
from service.settings import Settings, describe_error


def test_settings_from_env_and_errors(monkeypatch):
    monkeypatch.setenv("PCGEN_HMM", "/models/hmm")
    monkeypatch.setenv("PCGEN_API_KEYS", "first-key-1, second-key-2")
    monkeypatch.setenv("PCGEN_MAX_BATCH_SIZE", "4")
    s = Settings()
    assert (
        s.api_keys == ["first-key-1", "second-key-2"]
        and s.max_batch_size == 4
        and s.served_model == "gpt2-large"
    )
    monkeypatch.setenv("PCGEN_RATE_LIMIT", "lots")
    monkeypatch.setenv("PCGEN_REDIS_URL", "http://localhost")
    monkeypatch.setenv("PCGEN_DEVICE", "tpu")
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_error(info.value)
    for name in (
        "PCGEN_RATE_LIMIT / --rate-limit",
        "PCGEN_REDIS_URL / --redis-url",
        "PCGEN_DEVICE / --device",
    ):
        assert name in message
    monkeypatch.delenv("PCGEN_HMM")
    with pytest.raises(ValidationError, match="hmm"):
        Settings(rate_limit="10/second", redis_url=None, device="cpu")


def test_every_setting_is_a_flag_and_flags_override_env(monkeypatch, capsys):
    assert set(VALUE_SETTINGS) | set(BOOL_SETTINGS) == set(Settings.model_fields)
    assert {k for k, f in Settings.model_fields.items() if f.annotation is bool} == set(BOOL_SETTINGS)
    help_text = build_parser().format_help()
    assert all("--" + name.replace("_", "-") in help_text for name in Settings.model_fields)
    monkeypatch.setenv("PCGEN_HMM", "/env/hmm")
    monkeypatch.setenv("PCGEN_MAX_QUEUE", "5")
    s = load_settings({"max_queue": "9", "warmup": False})
    assert s.max_queue == 9 and s.warmup is False and s.hmm == "/env/hmm"
    with pytest.raises(SystemExit):
        load_settings({"max_queue": "0"})
    assert "PCGEN_MAX_QUEUE / --max-queue" in capsys.readouterr().err


def test_constraint_paths():
    assert constraint_path_to_loc("constraint.all[2].word_at") == ("constraint", "all", 2, "word_at")
    assert constraint_path_to_loc("constraint.keywords[0]") == ("constraint", "keywords", 0)
    assert loc_to_path(["body", "constraint", "all", 2, "word_at"]) == "body.constraint.all[2].word_at"


def test_memory_cache_lru_and_ttl():
    async def run():
        metrics = Metrics()
        cache = ResponseCache(MemoryBackend(2), metrics, ttl_s=1)
        for key in "abc":
            await cache.set(key, {"v": key})
        assert await cache.get("a") is None and (await cache.get("c")) == {"v": "c"}
        backend = cache.backend
        backend._data["c"] = (time.monotonic() - 1, backend._data["c"][1])  # expired
        assert await cache.get("c") is None

    asyncio.run(run())


def test_cache_fails_open_and_counts():
    class Broken:
        async def get(self, key):
            raise ConnectionError("down")

        async def set(self, key, value, ttl_s):
            raise ConnectionError("down")

        async def ping(self):
            raise ConnectionError("down")

    async def run():
        metrics = Metrics()
        health = RedisHealth(Broken(), metrics, probe_s=60)
        cache = ResponseCache(Broken(), metrics, ttl_s=10, health=health)
        assert await cache.get("k") is None
        await cache.set("k", {"v": 1})
        assert health.state == "down" and not health.available()
        assert await cache.get("k") is None  # circuit open: no call, still counted
        text = metrics.render().decode()
        assert (
            'pcgen_cache_errors_total{op="get"} 2.0' in text
            and 'pcgen_cache_errors_total{op="set"} 1.0' in text
        )
        assert "pcgen_redis_up 0.0" in text
        assert await health.ping() == "down"

    asyncio.run(run())


def test_single_flight_shares_and_cancels_with_the_last_waiter():
    async def run():
        flight = SingleFlight()
        calls = 0
        started = asyncio.Event()

        async def work():
            nonlocal calls
            calls += 1
            started.set()
            await asyncio.sleep(0.05)
            return calls

        results = await asyncio.gather(flight.run("k", work), flight.run("k", work), flight.run("k", work))
        assert calls == 1 and [r for r, _ in results] == [1, 1, 1]
        assert sorted(shared for _, shared in results) == [False, True, True] and len(flight) == 0

        cancelled = asyncio.Event()

        async def forever():
            try:
                await asyncio.sleep(60)
            finally:
                cancelled.set()

        waiters = [asyncio.ensure_future(flight.run("x", forever)) for _ in range(2)]
        await asyncio.sleep(0.01)
        waiters[0].cancel()
        await asyncio.sleep(0.01)
        assert not cancelled.is_set()  # one waiter left: keeps running
        waiters[1].cancel()
        await asyncio.wait_for(cancelled.wait(), 1)
        assert len(flight) == 0

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- HTTP layer


def _output(text: str = " dog") -> GenerationOutput:
    seq = SequenceResult(text, [1, 2], True, "length", -3.5)
    return GenerationOutput([seq], prompt_tokens=1, dfa_states=3, timings={"dfa_ms": 1.0, "precompute_ms": 2.0,
                                                                          "decode_ms": 3.0})  # fmt: skip


class FakeEngine:
    """Accepts everything; finishes each job after `delay` seconds (never when None)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.submitted: list[Job] = []
        self.cancelled: list[Job] = []
        self.queue_depth = self.active = 0

    async def submit(self, spec: GenerationSpec, stream: bool = False, **_) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(spec, loop, loop.create_future(), asyncio.Queue() if stream else None)
        job.search = SimpleNamespace(output=None)
        job.state = "running"
        job.started_at = time.perf_counter()
        self.submitted.append(job)
        if self.delay is not None:
            loop.call_later(self.delay, self._finish, job)
        return job

    def _finish(self, job: Job) -> None:
        if job.future.done():
            return
        job.search.output = _output()
        job.finished_at = time.perf_counter()
        job._set(job.search.output, None)

    def cancel(self, job: Job, reason: str = "disconnect") -> bool:
        self.cancelled.append(job)
        if not job.future.done():
            job.future.cancel()
        return True

    def stop(self) -> None:
        pass


def _app(delay: float | None, **settings):
    from service.app import create_app

    app = create_app(Settings(hmm="unused", warmup=False, **settings), load=False)
    runtime = app.state.runtime
    engine = FakeEngine(delay)
    runtime.engine = engine
    return app, runtime, engine


BODY = {"prompt": "The", "keywords": ["dog"], "num_beams": 2, "max_new_tokens": 8}


def test_deadline_gives_504_and_cancels_the_work():
    app, runtime, engine = _app(None, request_timeout_s=0.3)

    async def run():
        await runtime.start(load=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # the engine never finishes: only the deadline ends the request
            return await client.post("/generate", json=BODY)

    r = asyncio.run(run())
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert engine.cancelled == engine.submitted and len(engine.submitted) == 1
    cancelled = 'pcgen_cancelled_requests_total{model_name="gpt2-large",reason="timeout"} 1.0'
    assert cancelled in runtime.metrics.render().decode()


def test_identical_concurrent_requests_share_one_computation():
    app, runtime, engine = _app(0.2)

    async def run():
        await runtime.start(load=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            rs = await asyncio.gather(*(client.post("/generate", json=BODY) for _ in range(3)))
            again = await client.post("/generate", json=BODY)
        return rs, again

    rs, again = asyncio.run(run())
    assert [r.status_code for r in rs] == [200, 200, 200] and len(engine.submitted) == 1
    assert all(r.json()["outputs"] == rs[0].json()["outputs"] for r in rs)
    assert again.json()["cached"] is True and again.json()["timings"]["decode_ms"] == 0
    assert "pcgen_cache_shared_total 2.0" in runtime.metrics.render().decode()


def test_client_disconnect_cancels_the_work():
    app, runtime, engine = _app(None)

    async def run():
        await runtime.start(load=False)
        body = json.dumps(BODY).encode()
        gone = asyncio.Event()
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/generate", "raw_path": b"/generate",
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1234), "server": ("test", 80),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}  # fmt: skip
        call = asyncio.ensure_future(app(scope, receive, send))
        for _ in range(100):
            if engine.submitted:
                break
            await asyncio.sleep(0.01)
        gone.set()
        await asyncio.wait_for(call, 5)
        return sent

    sent = asyncio.run(run())
    assert len(engine.submitted) == 1 and engine.cancelled == engine.submitted
    assert sent[0]["status"] == 499  # nobody reads it: the client is gone
    cancelled = 'pcgen_cancelled_requests_total{model_name="gpt2-large",reason="disconnect"} 1.0'
    assert cancelled in runtime.metrics.render().decode()


def test_not_ready_is_503():
    from service.app import create_app

    app = create_app(Settings(hmm="unused"), load=False)

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/generate", json=BODY), await client.get("/health/ready")

    gen, ready = asyncio.run(run())
    assert gen.status_code == 503 and gen.json()["error"]["type"] == "unavailable"
    assert (
        ready.status_code == 503
        and ready.json()["status"] == "loading"
        and ready.json()["redis"] == "disabled"
    )


# ---------------------------------------------------------------------------------------------- real engine


def test_engine_batches_and_cancels(tiny_lm, tokenizer, tiny_hmm):
    from pc_core.constraints import parse_constraint

    metrics = Metrics()
    engine = Engine(tiny_lm, tokenizer, tiny_hmm, metrics, max_batch_size=4, max_queue=8)
    engine.start()

    def spec(word: str, **kw) -> GenerationSpec:
        return GenerationSpec("The", parse_constraint({"keywords": [word]}), DecodeParams(**kw))

    async def run():
        long = await engine.submit(spec("dog", max_new_tokens=60, min_new_tokens=60, num_beams=4))
        others = [await engine.submit(spec(w, max_new_tokens=10, num_beams=2)) for w in ("cat", "park")]
        for _ in range(500):
            if long.state == "running":
                break
            await asyncio.sleep(0.002)
        cancelled = engine.cancel(long)
        outputs = await asyncio.gather(*(j.future for j in others))
        for _ in range(200):
            if engine.active == 0:
                break
            await asyncio.sleep(0.01)
        return cancelled, long, outputs

    try:
        cancelled, long, outputs = asyncio.run(run())
    finally:
        engine.stop()
    assert all(seq.constraint_satisfied for out in outputs for seq in out.sequences)
    assert engine.active == 0 and engine.queue_depth == 0
    if cancelled:
        assert long.future.cancelled() and long.state == "cancelled"
    text = metrics.render().decode()
    assert "pcgen_batch_size_count" in text


# ---------------------------------------------------------------------------------------------- metrics


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
    app, runtime, engine = _app(0.05)

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
    declared += [("pcgen_cache_bytes", ["cache"]), ("pcgen_cache_entries", ["cache"]),
                 (DEVICE_MEMORY, ["model_name", "device", "kind"]),
                 ("pcgen_model_info", ["lm", "hmm", "hmm_hidden_size", "vocab_size", "device", "dtype"])]  # fmt: skip
    for name, labels in declared:
        rows = [line for line in section.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"{name}: {len(rows)} rows in the README's metrics table"
        cell = rows[0].split("|")[2]
        assert {label.strip(" `") for label in cell.split(",") if label.strip(" `-")} == set(labels), name
