"""From a validated `GenerationSpec` to a result, shared by every endpoint and by streaming: cache lookup ->
an identical computation in flight (single-flight) -> the engine, under the request deadline and watching for
the client leaving. Full and streamed responses take the same path; a stream that finds its result cached or
in flight replays it as one event per output."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request as HttpRequest

from service.engine import Job
from service.errors import ClientGone, ServiceError, Timeout
from service.generation import GenerationSpec
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
        out = job.search.output
        timings = {k: round(v, 3) for k, v in job.timings().items()}
        return cls(out.outputs_json(job.spec.constraint), out.usage, timings, dfa_states=out.dfa_states)

    def with_total(self, started: float) -> Result:
        timings = {"queue_ms": 0.0, "dfa_ms": 0.0, "precompute_ms": 0.0, "decode_ms": 0.0, **self.timings}
        timings["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return replace(self, timings=timings)


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
    return await _result(runtime, job)


async def _result(runtime: Runtime, job: Job, key: str | None = None) -> Result:
    """The job's result (stored in the cache under `key`); cancelling this cancels the job."""
    try:
        await asyncio.shield(job.future)
    except asyncio.CancelledError:
        runtime.require_engine().cancel(job)
        raise
    result = Result.from_job(job)
    if key is not None:
        await runtime.cache.set(key, result.to_cache())
    return result


async def _lookup(
    runtime: Runtime, spec: GenerationSpec
) -> tuple[str | None, Result | None, Awaitable | None]:
    """(cache key, cached result, identical computation in flight); the key is None when not cacheable."""
    if not (runtime.cache.enabled and spec.params.deterministic):
        return None, None, None
    key = spec.cache_key(runtime.fingerprints)
    hit = await runtime.cache.get(key)
    if hit is not None:
        return key, Result.from_cache(hit), None
    shared = runtime.singleflight.join(key)
    if shared is not None:
        runtime.metrics.cache_shared.inc()
    return key, None, shared


async def answer(runtime: Runtime, request: HttpRequest, spec: GenerationSpec) -> Result:
    """A complete result: from the cache, from an identical request in flight, or computed."""
    started = time.perf_counter()
    deadline = started + runtime.settings.request_timeout_s
    runtime.require_engine()

    async def work() -> Result:
        key, hit, shared = await _lookup(runtime, spec)
        if hit is not None:
            return hit
        if shared is not None and (result := await shared) is not None:
            return result
        if key is None:
            return await _compute(runtime, spec)

        async def compute_and_store() -> Result:
            job = await runtime.require_engine().submit(spec)
            return await _result(runtime, job, key)

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
        self.key, self.cached, shared = await _lookup(runtime, spec)
        if shared is not None:  # an identical request is computing it: replay its result when it comes
            self.cached = await guarded(runtime, request, shared, self.deadline)  # None: it was cancelled
        if self.cached is None:
            self.job = await guarded(runtime, request, engine.submit(spec, stream=True), self.deadline)
            if self.key is not None:  # identical requests arriving meanwhile share this computation
                runtime.singleflight.adopt(self.key, _result(runtime, self.job, self.key))
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
                if self.key is not None and not self.runtime.singleflight.join(self.key):
                    await self.runtime.cache.set(
                        self.key, result.to_cache()
                    )  # (else the shared task stores it)
                yield "result", result.with_total(self.started)
                return
        finally:
            if not finished and engine.cancel(job):  # the client went away mid-stream
                self.runtime.metrics.cancelled.labels("disconnect").inc()
