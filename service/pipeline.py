"""From a validated `GenerationSpec` to a result, shared by /generate and /v1/completions:
cache lookup -> single-flight -> engine, under the request deadline and watching for the client leaving."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request as HttpRequest

from service.engine import GenerationSpec, Job
from service.errors import ClientGone, ServiceError, Timeout
from service.runtime import Runtime

T = TypeVar("T")


@dataclass
class Result:
    outputs: list[dict[str, Any]]  # text, token_ids, constraint_satisfied, finish_reason, logprob
    usage: dict[str, int]  # prompt_tokens, completion_tokens
    timings: dict[str, float]  # queue_ms, dfa_ms, precompute_ms, decode_ms (total_ms added per response)
    cached: bool = False
    dfa_states: int | None = None  # size of the constraint's automaton

    def to_cache(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "usage": self.usage, "dfa_states": self.dfa_states}

    @classmethod
    def from_cache(cls, payload: dict[str, Any]) -> Result:
        zero = {"queue_ms": 0.0, "dfa_ms": 0.0, "precompute_ms": 0.0, "decode_ms": 0.0}
        return cls(
            payload["outputs"], payload["usage"], zero, cached=True, dfa_states=payload.get("dfa_states")
        )

    @classmethod
    def from_job(cls, job: Job) -> Result:
        out = job.request.output
        outputs = [
            {
                "text": s.text,
                "token_ids": list(s.token_ids),
                "constraint_satisfied": bool(s.constraint_satisfied),
                "finish_reason": s.finish_reason,
                "logprob": s.logprob if math.isfinite(s.logprob) else -1e30,
                "matches": _matches(job.spec.constraint, s.text),
            }
            for s in out.sequences
        ]
        usage = {
            "prompt_tokens": out.prompt_tokens,
            "completion_tokens": sum(len(s.token_ids) for s in out.sequences),
        }
        timings = {k: round(v, 3) for k, v in job.timings().items()}
        return cls(outputs, usage, timings, dfa_states=out.dfa_states)

    def with_total(self, started: float) -> Result:
        timings = {"queue_ms": 0.0, "dfa_ms": 0.0, "precompute_ms": 0.0, "decode_ms": 0.0, **self.timings}
        timings["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return replace(self, timings=timings)


def _matches(constraint: Any, text: str) -> list[dict[str, Any]]:
    """Character spans of the keywords found in the text (what the playground highlights)."""
    from pc_core.constraints.checker import keyword_matches

    try:
        return keyword_matches(constraint, text)
    except Exception:  # noqa: BLE001 - a presentation aid must never fail a generation
        return []


async def _wait_disconnect(request: HttpRequest) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def guarded(runtime: Runtime, request: HttpRequest, work: Awaitable[T], deadline: float) -> T:
    """Run `work` until it finishes, the deadline passes (504) or the client disconnects (ClientGone);
    in the last two cases `work` is cancelled, which cancels its engine job."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, watcher},
            timeout=max(0.0, deadline - time.perf_counter()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - whatever it was, the caller is gone or late
        pass
    if watcher in done and not watcher.cancelled():
        runtime.metrics.cancelled.labels("disconnect").inc()
        raise ClientGone()
    runtime.metrics.cancelled.labels("timeout").inc()
    raise Timeout(f"no result within {runtime.settings.request_timeout_s:g} s")


async def _compute(runtime: Runtime, spec: GenerationSpec) -> Result:
    engine = runtime.require_engine()
    job = await engine.submit(spec)
    try:
        await asyncio.shield(job.future)
    except asyncio.CancelledError:
        engine.cancel(job)
        raise
    return Result.from_job(job)


async def generate(runtime: Runtime, request: HttpRequest, spec: GenerationSpec) -> Result:
    """A complete result: from the cache, from an identical request in flight, or computed."""
    started = time.perf_counter()
    deadline = started + runtime.settings.request_timeout_s
    runtime.require_engine()

    async def work() -> Result:
        key = spec.cache_key(runtime.fingerprints) if runtime.cache.enabled and spec.deterministic else None
        if key is None:
            return await _compute(runtime, spec)
        hit = await runtime.cache.get(key)
        if hit is not None:
            return Result.from_cache(hit)

        async def compute_and_store() -> Result:
            result = await _compute(runtime, spec)
            await runtime.cache.set(key, result.to_cache())
            return result

        result, shared = await runtime.singleflight.run(key, compute_and_store)
        if shared:
            runtime.metrics.cache_shared.inc()
        return result

    result = await guarded(runtime, request, work(), deadline)
    return result.with_total(started)


class Stream:
    """A prepared streaming generation: iterate for ("token", StreamEvent) items, then one ("result", Result)
    or ("error", ServiceError). Preparation errors (422, 429, ...) are raised by `open`, before any event."""

    def __init__(self, runtime: Runtime, spec: GenerationSpec, started: float) -> None:
        self.runtime, self.spec, self.started = runtime, spec, started
        self.deadline = started + runtime.settings.request_timeout_s
        self.job: Job | None = None
        self.cached: Result | None = None
        self.key: str | None = None

    @classmethod
    async def open(cls, runtime: Runtime, request: HttpRequest, spec: GenerationSpec) -> Stream:
        self = cls(runtime, spec, time.perf_counter())
        engine = runtime.require_engine()
        if runtime.cache.enabled and spec.deterministic:
            self.key = spec.cache_key(runtime.fingerprints)
            hit = await runtime.cache.get(self.key)
            if hit is not None:
                self.cached = Result.from_cache(hit)
                return self
        self.job = await guarded(runtime, request, engine.submit(spec, stream=True), self.deadline)
        return self

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        if self.cached is not None:
            from pc_core.decoding import StreamEvent

            for index, out in enumerate(self.cached.outputs):
                if out["text"]:
                    yield "token", StreamEvent(index, out["text"], out["token_ids"])
            yield "result", self.cached.with_total(self.started)
            return
        job, engine = self.job, self.runtime.engine
        assert job is not None and job.events is not None and engine is not None
        finished = False
        try:
            while True:
                remaining = self.deadline - time.perf_counter()
                try:
                    kind, event = await asyncio.wait_for(job.events.get(), max(0.0, remaining))
                except asyncio.TimeoutError:
                    engine.cancel(job, "timeout")
                    self.runtime.metrics.cancelled.labels("timeout").inc()
                    finished = True
                    yield "error", Timeout(f"no result within {self.runtime.settings.request_timeout_s:g} s")
                    return
                if kind == "token":
                    yield "token", event
                    continue
                finished = True
                try:
                    job.future.result()
                except ServiceError as err:
                    yield "error", err
                    return
                except asyncio.CancelledError:
                    yield (
                        "error",
                        ServiceError("the request was cancelled", error_type="cancelled", status=499),
                    )
                    return
                result = Result.from_job(job)
                if self.key is not None:
                    await self.runtime.cache.set(self.key, result.to_cache())
                yield "result", result.with_total(self.started)
                return
        finally:
            if not finished and engine.cancel(job):  # the client went away mid-stream
                self.runtime.metrics.cancelled.labels("disconnect").inc()
