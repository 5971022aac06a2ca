"""50 concurrent requests with different constraints: all succeed, outputs equal the same requests made one
at a time, and the scheduler really decoded several requests per step."""

from __future__ import annotations

import asyncio
import random

import httpx
from response_text import metric_value

from pc_core import check_ids

WORDS = ["dog", "frisbee", "catch", "coffee", "garden", "snow", "winter", "children", "lake", "house", "night",
         "team", "tree", "girl", "fish", "field", "sky", "stove", "city", "park", "couch", "cat", "pan", "jump",
         "early", "brown", "lazy", "bird", "book", "rain"]  # fmt: skip


def requests(n: int = 50) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        words = rng.sample(WORDS, 1 + i % 2)
        body = {
            "prompt": rng.choice(["The", "A", "She said", ""]),
            "keywords": words,
            "max_new_tokens": 6 + i % 5,
        }
        if i % 2:
            body.update(do_sample=True, seed=i, num_return_sequences=1 + i % 3, top_p=0.95)
        else:
            body.update(num_beams=1 + i % 3)
        out.append(body)
    return out


async def _fire(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        return await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))


def test_fifty_concurrent_requests_equal_sequential_ones(start_server, tokenizer):
    # One client sends all 50: its compile backlog (default 4 waiting) must not refuse any, whether compiles
    # finish in the quick in-thread attempt (a fast machine) or queue for the workers (a busy one).
    server = start_server("batching", PCGEN_CACHE="false", PCGEN_MAX_BATCH_SIZE="16", PCGEN_MAX_QUEUE="64",
                          PCGEN_COMPILE_BACKLOG="64")  # fmt: skip
    bodies = requests()
    concurrent = asyncio.run(_fire(server.url, bodies))
    assert [r.status_code for r in concurrent] == [200] * len(bodies), [
        r.text for r in concurrent if r.status_code != 200
    ]
    text = server.metrics()
    total = metric_value(text, "pcgen_batch_size_count")
    singles = metric_value(text, "pcgen_batch_size_bucket", {"le": "1.0"})
    assert total > singles, "no decoding step ever held more than one request"
    with server.client() as client:
        sequential = [client.post("/generate", json=b) for b in bodies]
    for body, a, b in zip(bodies, concurrent, sequential):
        assert b.status_code == 200
        ours, alone = a.json()["outputs"], b.json()["outputs"]
        assert [o["token_ids"] for o in ours] == [o["token_ids"] for o in alone], body
        assert a.json()["cached"] is False and b.json()["cached"] is False
        for o in ours:
            assert o["constraint_satisfied"] and check_ids(
                {"keywords": body["keywords"]}, tokenizer, o["token_ids"]
            )
