"""The HTTP layer with a stand-in engine: deadlines, shared computations, disconnects, readiness."""

from __future__ import annotations

import asyncio
import json

import httpx
from fake_engine import BODY, app_with_fake_engine

from service.settings import Settings


def test_deadline_gives_504_and_cancels_the_work():
    app, runtime, engine = app_with_fake_engine(None, request_timeout_s=0.3)

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
    app, runtime, engine = app_with_fake_engine(0.2)

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
    app, runtime, engine = app_with_fake_engine(None)

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
