"""A bounded queue: overflow answers 429 with Retry-After, and every accepted request completes."""

from __future__ import annotations

import asyncio

import httpx
from response_text import metric_value

from pc_core import check_ids

WORDS = ["dog", "cat", "park", "snow", "lake", "tree", "girl", "fish", "sky", "pan", "city", "team", "couch",
         "rain", "bird", "book", "night", "house", "field", "coffee"]  # fmt: skip


async def _burst(url: str, n: int) -> list[tuple[dict, httpx.Response]]:
    bodies = [{"prompt": "The", "keywords": [WORDS[i % len(WORDS)]], "num_beams": 4, "max_new_tokens": 12,
               "min_new_tokens": 10} for i in range(n)]  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=n)) as client:
        responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
    return list(zip(bodies, responses))


def test_queue_overflow_gives_429_and_loses_nothing(start_server, tokenizer):
    # each decoding step takes >= 0.1 s (a test hook): the first requests are still decoding when the burst's
    # others arrive, however fast the machine decodes; the compile backlog (one client sends all 40) is wide
    # enough that only the queue refuses, however fast the machine compiles
    server = start_server("queue", PCGEN_MAX_QUEUE="2", PCGEN_MAX_BATCH_SIZE="2", PCGEN_CACHE="false",
                          PCGEN_TEST_STEP_DELAY_S="0.1", PCGEN_COMPILE_BACKLOG="64")  # fmt: skip
    results = asyncio.run(_burst(server.url, 40))
    codes = [r.status_code for _, r in results]
    assert set(codes) <= {200, 429}, codes
    rejected = [r for _, r in results if r.status_code == 429]
    accepted = [(b, r) for b, r in results if r.status_code == 200]
    assert rejected, "40 simultaneous requests never overflowed a queue of 2"
    assert len(accepted) >= 2
    for r in rejected:
        assert r.headers["retry-after"].isdigit()
        assert r.json()["error"]["type"] == "queue_full"
    for body, r in accepted:
        for o in r.json()["outputs"]:
            assert o["constraint_satisfied"] and check_ids(
                {"keywords": body["keywords"]}, tokenizer, o["token_ids"]
            )
    text = server.metrics()
    assert metric_value(text, "pcgen_rejected_requests_total", {"reason": "queue_full"}) == len(rejected)
    assert metric_value(text, "pcgen_requests_total", {"route": "/generate", "status": "200"}) == len(
        accepted
    )
    assert metric_value(text, "pcgen_queue_depth") == 0 and metric_value(text, "pcgen_active_requests") == 0
