"""The response cache (LRU, TTL, failing open) and single-flight sharing."""

from __future__ import annotations

import asyncio
import time

from pc_core.cache import LRUCache
from service.cache import MemoryBackend, RedisHealth, ResponseCache, SingleFlight
from service.metrics import Metrics


def test_memory_cache_lru_and_ttl():
    async def run():
        metrics = Metrics()
        cache = ResponseCache(MemoryBackend(2), metrics, ttl_s=1)
        for key in "abc":
            await cache.set(key, {"v": key})
        assert await cache.get("a") is None and (await cache.get("c")) == {"v": "c"}
        backend = cache.backend
        assert backend.evictions == 1
        backend._data["c"] = (time.monotonic() - 1, backend._data["c"][1])  # expired
        assert await cache.get("c") is None
        assert backend.evictions == 1  # an expiry is not an eviction

    asyncio.run(run())


def test_byte_bounded_lru_counts_its_evictions():
    cache: LRUCache[bytes] = LRUCache("test", 10, len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.evictions == 0 and cache.get("a") == b"1234"  # "a" is now the most recent
    cache.put("c", b"1234")  # 12 bytes > 10: the least recent ("b") goes
    assert cache.evictions == 1 and cache.get("b") is None and len(cache) == 2
    cache.put("d", b"x" * 11)  # larger than the bound: not kept, nothing evicted
    assert cache.evictions == 1 and cache.get("d") is None
    cache.resize(4)
    assert cache.evictions == 2 and cache.bytes == 4


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
