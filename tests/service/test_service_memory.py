"""Bounded memory: distinct requests against a server with small cache limits keep its resident memory flat.
(Its own module so that the suite's workers run it beside the other hardening tests.)"""

from __future__ import annotations

import random
import threading

import httpx
import pytest
from response_text import metric_value

WORDS = ("dog cat pan park snow lake tree girl fish sky city team house night garden winter coffee boy "
         "field frisbee book game roof rain stove couch bird children building vegetable").split()  # fmt: skip


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_memory_stays_flat_over_many_distinct_requests(start_server):
    # Small limits so that the warm-up alone fills every cache: the measured requests all run at full caches,
    # each one evicting, which is the state a long-running server lives in.
    limits = {"dfa": 2**20, "guide": 2**20, "response": 2**16}
    env = {f"PCGEN_{cache.upper()}_CACHE_BYTES": str(limit) for cache, limit in limits.items()}
    server = start_server("memory", PCGEN_COMPILE_WORKERS="1", PCGEN_COMPILE_WARM_UP="1", **env)
    rng = random.Random(0)
    bodies = []
    while len(bodies) < 600:
        words = rng.sample(WORDS, rng.randint(1, 3))
        bodies.append({"prompt": rng.choice(["The", "A", "In the"]), "keywords": words,
                       "max_new_tokens": 8 + len(bodies) % 5, "num_beams": 1 + len(bodies) % 2})  # fmt: skip

    def run(chunk: list[dict]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for body in chunk:
                assert client.post("/generate", json=body).status_code in (200, 422)

    def run_all(part: list[dict]) -> None:
        threads = [threading.Thread(target=run, args=(part[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)

    run_all(bodies[:200])
    warm = _rss_kb(server.proc.pid)
    # Filled = the cache has evicted to stay within its bound. (Its bytes right now say less: entries differ
    # in size, so after a big entry evicted the small ones and a small one then evicted the big one, a full
    # LRU cache may hold a third of its bound, depending on the order the four clients' requests finished.)
    for cache, evicted in _cache_values(server.metrics(), limits, "pcgen_cache_evictions_total").items():
        assert evicted > 0, f"the warm-up left the {cache} cache below its bound: no eviction"
    run_all(bodies[200:])
    grown_mb = (_rss_kb(server.proc.pid) - warm) / 1024
    bound_mb = sum(limits.values()) / 2**20 + 40  # the caches' bounds plus allocator slack
    assert grown_mb < bound_mb, grown_mb
    for cache, held in _cache_values(server.metrics(), limits, "pcgen_cache_bytes").items():
        assert 0 < held <= limits[cache], (cache, held)


def _cache_values(text: str, limits: dict[str, int], metric: str) -> dict[str, float]:
    return {cache: metric_value(text, metric, {"cache": cache}) for cache in limits}
