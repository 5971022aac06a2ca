"""Redis-backed cache and rate limits fail open: Redis killed mid-load -> zero failed requests, errors counted,
readiness reports it; Redis back on the same port -> cache hits resume."""

from __future__ import annotations

import asyncio
import time

import httpx
from response_text import metric_value

WORDS = ["dog", "cat", "park", "snow", "lake", "tree", "girl", "fish", "sky", "pan", "city", "team"]


def _bodies(n: int) -> list[dict]:
    out = []
    for i in range(n):
        body = {"prompt": "The", "keywords": [WORDS[i % len(WORDS)]], "max_new_tokens": 8}
        if i % 3 == 0:
            body.update(do_sample=True, seed=i)  # cacheable sampling
        elif i % 3 == 1:
            body.update(num_beams=2)
        else:
            body.update(do_sample=True)  # not cacheable
        out.append(body)
    return out


async def _load_with_kill(url: str, redis, n: int = 60, kill_after: int = 12) -> list[httpx.Response]:
    done = 0
    killed = asyncio.Event()
    gate = asyncio.Semaphore(6)

    async def one(client: httpx.AsyncClient, body: dict) -> httpx.Response:
        nonlocal done
        async with gate:
            r = await client.post("/generate", json=body)
        done += 1
        if done >= kill_after and not killed.is_set():
            killed.set()
            redis.kill()  # SIGKILL, mid-load
        return r

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(one(client, b) for b in _bodies(n)))


def test_redis_down_fails_open_and_recovers(start_server, redis_server):
    server = start_server("service-redis", PCGEN_REDIS_URL=redis_server.url, PCGEN_RATE_LIMIT="100000/minute")
    with server.client() as client:
        assert client.get("/health/ready").json()["redis"] == "ok"
        body = {"prompt": "A", "keywords": ["garden"], "num_beams": 2}
        assert client.post("/generate", json=body).json()["cached"] is False
        assert client.post("/generate", json=body).json()["cached"] is True  # served from Redis
    import redis

    keys = [k.decode() for k in redis.Redis.from_url(redis_server.url).keys("*")]
    assert any(k.startswith("pcgen:cache:") for k in keys) and any(
        k.startswith("pcgen:ratelimit") for k in keys
    ), keys

    responses = asyncio.run(_load_with_kill(server.url, redis_server))
    assert not redis_server.ping()
    failed = [(r.status_code, r.text) for r in responses if r.status_code != 200]
    assert failed == [], failed
    assert all(o["constraint_satisfied"] for r in responses for o in r.json()["outputs"])

    text = server.metrics()
    assert metric_value(text, "pcgen_cache_errors_total") > 0
    assert metric_value(text, "pcgen_redis_up") == 0
    with server.client() as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["redis"] == "down"
        # still serving while Redis is away
        r = client.post("/generate", json={"prompt": "A", "keywords": ["tree"], "num_beams": 2})
        assert r.status_code == 200 and r.json()["cached"] is False

    redis_server.start()  # same port, empty
    with server.client() as client:
        deadline = time.monotonic() + 30
        while client.get("/health/ready").json()["redis"] != "ok":
            assert time.monotonic() < deadline, "readiness never saw Redis come back"
            time.sleep(0.2)
        body = {"prompt": "A", "keywords": ["tree"], "num_beams": 2}
        cached = []
        for _ in range(4):
            cached.append(client.post("/generate", json=body).json()["cached"])
            time.sleep(0.2)
        assert cached[-1] is True and cached[-2] is True, cached
    assert metric_value(server.metrics(), "pcgen_redis_up") == 1
