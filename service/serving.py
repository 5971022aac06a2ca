"""From a validated `GenerationSpec` to a result, shared by every endpoint and by streaming: cache lookup ->
an identical computation in flight (single-flight) -> the engine, under the request deadline and watching for
the client leaving. Full and streamed responses take the same path; a stream that finds its result cached or
in flight replays it as one event per output. Several generations of one request (OpenAI's list of prompts)
run concurrently, so they share decoding steps (`answer`, `open_streams`, `merged_events`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from starlette.requests import Request as HttpRequest

from service.engine import Job
from service.errors import ClientGone, ServiceError, Timeout, classify
from service.generation import GenerationSpec
from service.response_body import ZERO_TIMINGS, outputs_json, with_total
from service.runtime import Runtime

T = TypeVar("T")


@dataclass
class Result:
    outputs: list[dict[str, Any]]  # text, token_ids, constraint_satisfied, finish_reason, logprob
    usage: dict[str, int]  # prompt_tokens, completion_tokens
    timings: dict[str, float]  # queue_ms, dfa_ms, precompute_ms, decode_ms (total_ms added per response)
    cached: bool = False
    dfa_states: int | None = None  # size of the constraint's automaton
    guide: str | None = None  # which guide ran: exact or factored (pc_core.factored_guide)

    def to_cache(self) -> dict[str, Any]:
        return {
            "outputs": self.outputs,
            "usage": self.usage,
            "dfa_states": self.dfa_states,
            "guide": self.guide,
        }

    @classmethod
    def from_cache(cls, payload: dict[str, Any]) -> Result:
        return cls(
            payload["outputs"], payload["usage"], dict(ZERO_TIMINGS), cached=True,
            dfa_states=payload.get("dfa_states"), guide=payload.get("guide"),
        )  # fmt: skip

    @classmethod
    def from_job(cls, job: Job) -> Result:
        out = job.search.output
        return cls(outputs_json(out, job.generation.constraint), out.usage, job.timings(), dfa_states=out.dfa_states,
                   guide=out.guide)  # fmt: skip

    def with_total(self, started: float) -> Result:
        """The result with its timings as an answer reports them: total_ms from `started`."""
        return replace(self, timings=with_total(self.timings, (time.perf_counter() - started) * 1000))


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


def returned(runtime: Runtime, result: Result) -> Result:
    """`result` as a generation request returns it, its end-to-end latency (`timings.total_ms`) counted in
    pcgen_e2e_request_latency_seconds by whether the response cache answered it. Only generation routes come
    through here: probes and /metrics never do."""
    cached = "true" if result.cached else "false"
    runtime.metrics.e2e_latency.labels(cached).observe(result.timings["total_ms"] / 1000)
    return result


def _who(request: HttpRequest) -> str:
    """The client a request's compile work is charged to: its API key's id, else its address."""
    return getattr(request.state, "identity", "anonymous")


async def _submit(
    runtime: Runtime, request: HttpRequest, generation: GenerationSpec, deadline: float, stream: bool = False
) -> Job:
    """The engine's job for `generation`, charged to the request's client. What the library raised (a constraint
    or parameter error) is said as HTTP here, once (service/errors.py:classify), with the body's field names."""
    try:
        return await runtime.require_engine().submit(generation, stream=stream, client=_who(request),
                                                     deadline=deadline)  # fmt: skip
    except ServiceError:
        raise
    except Exception as err:
        raise classify(err, generation.field_names) from err


async def _result(runtime: Runtime, job: Job, key: str | None = None) -> Result:
    """The job's result (stored in the cache under `key`); cancelling this cancels the job. A decoding
    step's failure is said as HTTP here (service/errors.py:classify)."""
    try:
        await asyncio.shield(job.future)
    except asyncio.CancelledError:
        runtime.require_engine().cancel(job)
        raise
    except ServiceError:
        raise
    except Exception as err:
        raise classify(err, job.generation.field_names) from err
    result = Result.from_job(job)
    if key is not None:
        await runtime.cache.set(key, result.to_cache())
    return result


async def _lookup(
    runtime: Runtime, generation: GenerationSpec
) -> tuple[str | None, Result | None, Awaitable | None]:
    """(cache key, cached result, identical computation in flight); the key is None when not cacheable."""
    if not (runtime.cache.enabled and generation.params.deterministic):
        return None, None, None
    key = generation.cache_key(runtime.fingerprints)
    hit = await runtime.cache.get(key)
    if hit is not None:
        return key, Result.from_cache(hit), None
    shared = runtime.singleflight.join(key)
    if shared is not None:
        runtime.metrics.cache_shared.inc()
    return key, None, shared


async def answer(runtime: Runtime, request: HttpRequest, generations: list[GenerationSpec]) -> list[Result]:
    """Complete results for the generations of one request, computed concurrently under its deadline; the
    first error cancels the others and is raised."""
    started = time.perf_counter()
    deadline = started + runtime.settings.request_timeout_s
    runtime.require_engine()
    work = _all([_compute(runtime, request, generation, deadline) for generation in generations])
    results = await guarded(runtime, request, work, deadline)
    return [returned(runtime, result.with_total(started)) for result in results]


async def _all(works: list[Awaitable[T]]) -> list[T]:
    """`asyncio.gather`, except that a failure (or being cancelled) cancels the works still running."""
    tasks = [asyncio.ensure_future(work) for work in works]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # their jobs are cancelled before we go on
        raise


async def _compute(
    runtime: Runtime, request: HttpRequest, generation: GenerationSpec, deadline: float
) -> Result:
    """One generation's result: cached, shared with an identical one in flight, or computed."""
    key, hit, shared = await _lookup(runtime, generation)
    if hit is not None:
        return hit
    if shared is not None and (result := await shared) is not None:
        return result
    if key is None:
        return await _result(runtime, await _submit(runtime, request, generation, deadline))

    async def compute_and_store() -> Result:
        return await _result(runtime, await _submit(runtime, request, generation, deadline), key)

    result, shared = await runtime.singleflight.run(key, compute_and_store)
    if shared:
        runtime.metrics.cache_shared.inc()
    return result


class Stream:
    """A prepared streaming generation: iterate for ("token", StreamEvent) items, then one ("result", Result)
    or ("error", ServiceError). Preparation errors (422, 429, ...) are raised by `open`, before any event."""

    def __init__(
        self, runtime: Runtime, request: HttpRequest, generation: GenerationSpec, started: float
    ) -> None:
        self.runtime, self.request, self.generation, self.started = runtime, request, generation, started
        self.deadline = started + runtime.settings.request_timeout_s
        self.job: Job | None = None
        self.cached: Result | None = None
        self.key: str | None = None

    @classmethod
    async def open(cls, runtime: Runtime, request: HttpRequest, generation: GenerationSpec) -> Stream:
        self = cls(runtime, request, generation, time.perf_counter())
        runtime.require_engine()
        self.key, self.cached, shared = await _lookup(runtime, generation)
        if shared is not None:  # an identical request is computing it: replay its result when it comes
            self.cached = await guarded(runtime, request, shared, self.deadline)  # None: it was cancelled
        if self.cached is None:
            submitted = _submit(runtime, request, generation, self.deadline, stream=True)
            self.job = await guarded(runtime, request, submitted, self.deadline)
            if self.key is not None:  # identical requests arriving meanwhile share this computation
                runtime.singleflight.adopt(self.key, _result(runtime, self.job, self.key))
        return self

    def _error(self, err: ServiceError) -> tuple[str, ServiceError]:
        """An error event; the response's status was sent as 200 with the first byte, so the request is
        counted under the error's status instead (ServiceMiddleware reads final_status)."""
        self.request.state.final_status = err.status
        return "error", err

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        if self.cached is not None:
            from pc_core.results import StreamEvent

            for index, out in enumerate(self.cached.outputs):
                if out["text"]:
                    yield "token", StreamEvent(index, out["text"], out["token_ids"])
            yield "result", returned(self.runtime, self.cached.with_total(self.started))
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
                    yield self._error(
                        Timeout(f"no result within {self.runtime.settings.request_timeout_s:g} s")
                    )
                    return
                if kind == "token":
                    yield "token", event
                    continue
                finished = True
                try:
                    job.future.result()
                except asyncio.CancelledError:
                    yield self._error(
                        ServiceError("the request was cancelled", error_type="cancelled", status=499)
                    )
                    return
                except Exception as err:  # the library's, said as HTTP (service/errors.py)
                    yield self._error(classify(err, self.generation.field_names))
                    return
                # the result is stored in the cache by the computation this stream registered (Stream.open)
                yield "result", returned(self.runtime, Result.from_job(job).with_total(self.started))
                return
        finally:
            if not finished and engine.cancel(job):  # the client went away mid-stream
                self.runtime.metrics.cancelled.labels("disconnect").inc()


async def open_streams(
    runtime: Runtime, request: HttpRequest, generations: list[GenerationSpec]
) -> list[Stream]:
    """Streams for the generations of one request, opened concurrently; when one cannot be opened (its
    error is raised) the others are cancelled."""
    tasks = [asyncio.ensure_future(Stream.open(runtime, request, generation)) for generation in generations]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Stream) and outcome.job is not None and runtime.engine is not None:
                runtime.engine.cancel(outcome.job)
        raise


async def merged_events(streams: list[Stream]) -> AsyncIterator[tuple[int, str, Any]]:
    """The events of several streams as they come, as (position of the stream, kind, item). Ends after every
    stream's last event, or right after the first error event; closing it early cancels what still runs."""
    if len(streams) == 1:
        async for kind, item in streams[0].events():
            yield 0, kind, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(position: int, stream: Stream) -> None:
        try:
            async for kind, item in stream.events():
                queue.put_nowait((position, kind, item))
        except Exception as err:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait((position, "raise", err))
        finally:
            queue.put_nowait((position, "closed", None))

    pumps = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(pumps)
        while running:
            position, kind, item = await queue.get()
            if kind == "closed":
                running -= 1
            elif kind == "raise":
                raise item
            else:
                yield position, kind, item
                if kind == "error":
                    return
    finally:
        for task in pumps:  # cancelling a pump closes its stream, which cancels its job
            task.cancel()
