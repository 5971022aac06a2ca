"""A stand-in engine for HTTP-layer tests: accepts every job and finishes it after a delay (or never)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from pc_core.results import GenerationOutput, SequenceResult
from service.engine import Job
from service.generation import GenerationSpec
from service.settings import Settings


def fake_output(text: str = " dog") -> GenerationOutput:
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

    async def submit(self, generation: GenerationSpec, stream: bool = False, **_) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(generation, loop, loop.create_future(), asyncio.Queue() if stream else None)
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
        job.search.output = fake_output()
        job.finished_at = time.perf_counter()
        job._set(job.search.output, None)

    def cancel(self, job: Job, reason: str = "disconnect") -> bool:
        self.cancelled.append(job)
        if not job.future.done():
            job.future.cancel()
        return True

    def stop(self) -> None:
        pass


def app_with_fake_engine(delay: float | None, **settings):
    from service.app import create_app

    app = create_app(Settings(hmm="unused", warmup=False, **settings), load=False)
    runtime = app.state.runtime
    engine = FakeEngine(delay)
    runtime.engine = engine
    return app, runtime, engine


BODY = {"prompt": "The", "keywords": ["dog"], "num_beams": 2, "max_new_tokens": 8}
