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
        health = RedisHealth(Broken(), metrics, retry_s=60)
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

    async def submit(self, spec: GenerationSpec, stream: bool = False) -> Job:
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
            started = time.perf_counter()
            r = await client.post("/generate", json=BODY)
            assert time.perf_counter() - started < 5
        return r

    r = asyncio.run(run())
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"
    assert engine.cancelled == engine.submitted and len(engine.submitted) == 1
    assert 'pcgen_cancelled_requests_total{reason="timeout"} 1.0' in runtime.metrics.render().decode()


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
    assert 'pcgen_cancelled_requests_total{reason="disconnect"} 1.0' in runtime.metrics.render().decode()


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
