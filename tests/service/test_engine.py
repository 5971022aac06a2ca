"""The real engine in process: batching and cancellation."""

from __future__ import annotations

import asyncio

from pc_core.params import DecodeParams
from service.engine import Engine
from service.generation import GenerationSpec
from service.metrics import Metrics


def test_engine_batches_and_cancels(tiny_lm, tokenizer, tiny_hmm):
    from pc_core.constraints import parse_constraint

    metrics = Metrics()
    engine = Engine(tiny_lm, tokenizer, tiny_hmm, metrics, max_batch_size=4, max_queue=8)
    engine.start()

    def generation(word: str, **kw) -> GenerationSpec:
        return GenerationSpec("The", parse_constraint({"keywords": [word]}), DecodeParams(**kw))

    async def run():
        long = await engine.submit(generation("dog", max_new_tokens=60, min_new_tokens=60, num_beams=4))
        others = [await engine.submit(generation(w, max_new_tokens=10, num_beams=2)) for w in ("cat", "park")]
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
