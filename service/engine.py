"""The scheduler: bounded admission, constraint compilation in worker processes, preparation off the event
loop, and continuous batching on one dedicated decoding thread.

    submit() ──> [compile pool: worker processes, fair per client] ──> [prepare threads: the guide's
    precompute, the first state] ──> ready queue
                                                                                       │
    decoding thread: admit ready requests between steps (up to max_batch_size) ──> BatchDecoder.step()
                                                                                       │
    asyncio futures / per-request event queues  <── loop.call_soon_threadsafe ─────────┘

The queue bound counts accepted requests that are not decoding yet (compiling, preparing or waiting for a
slot): past it `submit` raises QueueFull (429). Constraint errors surface from `submit` (422) before anything
is queued for decoding. Every stage honours the request's deadline: a compile not yet started is dropped, a
running one stops at its time budget (cut to the deadline), the precompute stops, a request still waiting for
a batch slot is not started, and `cancel` (client gone, deadline passed) drops a running request's rows at the
next step boundary. The event loop never runs model code.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pc_core.constraints import compile_constraint
from pc_core.decoding import (
    BatchDecoder,
    GenerationOutput,
    GuidedSearch,
    StreamEvent,
    check_token_ids,
    guided_constraint,
    prepare,
)
from pc_core.unguided import prepare_unguided
from service.compile_pool import CompilePool
from service.errors import BadRequest, QueueFull, ServiceError, Timeout, Unavailable, classify
from service.generation import GenerationSpec
from service.metrics import Metrics

# Test-only hook: each decoding step takes at least this long, so a test of what happens to a request that is
# still decoding at its deadline does not depend on how fast the machine decodes.
TEST_STEP_DELAY_S = float(os.environ.get("PCGEN_TEST_STEP_DELAY_S", "0") or 0)

log = logging.getLogger(__name__)


_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    spec: GenerationSpec
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    events: asyncio.Queue | None = None  # streaming: ("token", StreamEvent) items, then ("end", None)
    client: str = "anonymous"  # API key id or address: compile work is shared out fairly between clients
    deadline: float | None = None  # time.perf_counter(); work for the job stops once it passes
    id: int = field(default_factory=lambda: next(_ids))
    search: GuidedSearch | None = None  # built by Engine._prepare
    state: str = "preparing"  # preparing -> queued -> running -> done | cancelled | failed
    accepted_at: float = field(default_factory=time.perf_counter)
    queued_at: float | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    cancel_reason: str | None = None
    compile_ms: float = (
        0.0  # getting the automaton ahead of prepare (compile pool: the wait for a worker too)
    )
    observed: bool = True  # counted in the per-request metrics (False: the warm-up generation)

    # called on the decoding thread -----------------------------------------------------------------

    def push_event(self, event: StreamEvent) -> None:
        if self.events is not None:
            self._call(self.events.put_nowait, ("token", event))

    def resolve(self, output: GenerationOutput) -> None:
        self.finished_at = time.perf_counter()
        self._call(self._set, output, None)

    def fail(self, error: BaseException) -> None:
        self.finished_at = time.perf_counter()
        self._call(self._set, None, error)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    # on the event loop -----------------------------------------------------------------------------

    def _set(self, output: GenerationOutput | None, error: BaseException | None) -> None:
        if not self.future.done():
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(output)
        if self.events is not None:
            self.events.put_nowait(("end", None))

    def timings(self) -> dict[str, float]:
        """The engine's dfa_ms, precompute_ms and decode_ms, plus queue_ms: time from acceptance to joining the
        batch not spent compiling (waiting for a preparation thread and for a batch slot)."""
        out = dict(self.search.output.timings) if self.search is not None and self.search.output else {}
        if out:
            out["dfa_ms"] = out.get("dfa_ms", 0.0) + self.compile_ms
        start = self.started_at or self.finished_at or time.perf_counter()
        preparing = out.get("dfa_ms", 0.0) + out.get("precompute_ms", 0.0)
        out["queue_ms"] = max(0.0, (start - self.accepted_at) * 1000 - preparing)
        return out


class Engine:
    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        hmm: Any,
        metrics: Metrics,
        *,
        max_batch_size: int = 8,
        max_queue: int = 64,
        prepare_workers: int = 2,
        max_positions: int | None = None,
        compile_pool: CompilePool | None = None,
    ) -> None:
        """`compile_pool`: worker processes for constraint compilation; None compiles in the prepare threads
        (a library default: simple, but a long compile there competes with decoding for the GIL)."""
        self.lm, self.tokenizer, self.hmm, self.metrics = lm, tokenizer, hmm, metrics
        self.compile_pool = compile_pool
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_positions = max_positions
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ready: deque[Job] = deque()
        self._to_cancel: list[Job] = []
        self._waiting = 0  # accepted, not decoding yet (preparing or ready)
        self._active: list[Job] = []  # decoding thread only
        self._stopping = False
        self._decoder = BatchDecoder(lm)
        self._pool = ThreadPoolExecutor(prepare_workers, thread_name_prefix="pcgen-prepare")
        self._thread = threading.Thread(target=self._run, name="pcgen-decode", daemon=True)
        self.steps = 0
        self._finished = 0  # requests decoded, and an average of how long that took (for admission)
        self._seconds_per_request = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.compile_pool is not None:
            self.compile_pool.shutdown()

    def expected_wait_s(self) -> float | None:
        """How long a request accepted now would wait for a batch slot, from the recent time requests took
        (None until enough have finished to say). Callers hold the lock."""
        if self._finished < 10:
            return None
        rounds = (self._waiting + len(self._active)) // self.max_batch_size
        return rounds * self._seconds_per_request

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def active(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------------ event loop side

    async def submit(
        self,
        spec: GenerationSpec,
        stream: bool = False,
        client: str = "anonymous",
        deadline: float | None = None,
        observed: bool = True,
    ) -> Job:
        """Admit, compile, prepare (off the loop) and queue for decoding. Raises QueueFull, BadRequest
        (constraint and parameter errors, with `error.type`), Timeout or Unavailable."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            if self._waiting >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(
                    f"the queue is full ({self.max_queue} requests waiting); retry later",
                    headers={"Retry-After": "1"},
                )
            wait = self.expected_wait_s()
            if deadline is not None and wait is not None and time.perf_counter() + wait > deadline:
                self.metrics.abandoned.labels("admission").inc()
                raise Unavailable(
                    f"the queue ahead would take about {wait:.1f} s, past this request's deadline; retry later",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            self._waiting += 1
            self.metrics.queue_depth.set(self._waiting)
        job = Job(spec, loop, loop.create_future(), asyncio.Queue() if stream else None, client=client,
                  deadline=deadline, observed=observed)  # fmt: skip
        try:
            compiling = time.perf_counter()
            dfa = await self._compile(job)
            job.compile_ms = (time.perf_counter() - compiling) * 1000
            job.search = await loop.run_in_executor(self._pool, self._prepare, job, dfa)
        except BaseException:
            with self._lock:
                self._waiting -= 1
                job.state = "failed"
                self.metrics.queue_depth.set(self._waiting)
            raise
        with self._wake:
            if self._stopping:
                self._waiting -= 1
                raise Unavailable("the server is shutting down")
            job.state = "queued"
            job.queued_at = time.perf_counter()
            self._ready.append(job)
            self._wake.notify()
        return job

    async def _compile(self, job: Job) -> Any:
        """The constraint's DFA: cached, or compiled quickly in a prepare thread, or else from the compile pool
        (None without a pool: the prepare thread compiles). Waits for the pool without holding a thread;
        cancelling the request drops a compile that has not started."""
        pool = self.compile_pool
        if pool is None or job.spec.constraint is None:  # no pool, or nothing to compile
            return None
        params = job.spec.params
        loop = asyncio.get_running_loop()
        try:
            # what prepare will compile: the constraint with the suffix, stop strings and token bans
            check_token_ids(params, len(self.tokenizer))
            constraint = guided_constraint(job.spec.constraint, params)
            known = pool.cached(constraint, self.tokenizer, params.max_states, params.time_budget_s)
            if not known and pool.quick_for(job.client, constraint):
                pool.check_room(job.client)
                quick = await loop.run_in_executor(self._pool, pool.try_quick, constraint,
                                                   self.tokenizer, params.max_states)  # fmt: skip
                if quick is not None:
                    return quick
            future = pool.submit(job.client, constraint, self.tokenizer, params.max_states,
                                 params.time_budget_s, deadline=job.deadline)  # fmt: skip
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise self._classified(err, job, "compile") from err

    def cancel(self, job: Job, reason: str = "disconnect") -> bool:
        """Stop a job (from the event loop): dropped from the queue now, or from the batch at the next step.
        False when it had already finished."""
        with self._wake:
            if job.state == "queued":
                self._ready.remove(job)
                self._waiting -= 1
                self.metrics.queue_depth.set(self._waiting)
                job.state = "cancelled"
            elif job.state == "running":
                self._to_cancel.append(job)
                self._wake.notify()
            else:
                return False
            job.cancel_reason = reason
        if not job.future.done():
            job.future.cancel()
        if job.events is not None:
            job.events.put_nowait(("end", None))
        return True

    # ------------------------------------------------------------------ preparation (thread pool)

    def _prepare(self, job: Job, dfa: Any = None) -> GuidedSearch:
        """The request's GuidedSearch: the guide's precompute (stopped at the deadline) and first state."""
        spec, params = job.spec, job.spec.params
        if job.deadline is not None and time.perf_counter() >= job.deadline:
            self.metrics.abandoned.labels("prepare").inc()
            raise Timeout("the request's deadline passed before it could be prepared")
        prompt_ids = self._prompt_ids(spec.prompt)
        self._check_context(len(prompt_ids), params.max_new_tokens, spec.field_names.get("max_new_tokens"))
        on_stream = job.push_event if job.events is not None else None
        if spec.constraint is None:  # no constraint: the LM's own distribution, no automaton or guide
            try:
                return prepare_unguided(self.tokenizer, prompt_ids, params, on_stream,
                                        device=next(self.lm.parameters()).device)  # fmt: skip
            except Exception as err:
                raise self._classified(err, job, "prepare") from err

        compiled = guided_constraint(spec.constraint, params) if dfa is not None else None

        def compile(constraint: Any, tokenizer: Any, blocklist_mask: bool = True, **limits: Any) -> Any:
            if blocklist_mask and constraint == compiled:  # compiled already, in the pool
                return dfa
            if self.compile_pool is None:
                return compile_constraint(constraint, tokenizer, blocklist_mask=blocklist_mask, **limits)
            return self.compile_pool.compile(job.client, constraint, tokenizer, blocklist_mask=blocklist_mask,
                                             deadline=job.deadline, **limits)  # fmt: skip

        try:
            search = prepare(self.tokenizer, self.hmm, spec.constraint, prompt_ids, params, on_stream,
                             compile=compile, deadline=job.deadline)  # fmt: skip
        except Exception as err:
            raise self._classified(err, job, "prepare") from err
        if job.observed:
            self.metrics.dfa_states.observe(search.dfa.num_states)
            self.metrics.guides.labels(kind=getattr(search.guide, "kind", "exact")).inc()
            self.metrics.dfa_compile.observe((search.timings["dfa_ms"] + job.compile_ms) / 1000)
            self.metrics.guide_precompute.observe(search.timings["precompute_ms"] / 1000)
        return search

    def _prompt_ids(self, prompt: str | tuple[int, ...]) -> list[int]:
        """A text prompt tokenized, or token ids (OpenAI's token prompts) checked against the vocabulary."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        size = len(self.tokenizer)
        bad = next((t for t in prompt if not 0 <= t < size), None)
        if bad is not None:
            raise BadRequest(f"token id {bad} is not in the vocabulary (0..{size - 1})", path="prompt")
        return list(prompt)

    def _check_context(self, prompt_tokens: int, max_new_tokens: int, horizon: str | None = None) -> None:
        """The prompt plus the horizon must fit the LM's context; the error names the field at fault, as the
        request body names it (`horizon`: OpenAI's max_tokens)."""
        if self.max_positions is None or max(1, prompt_tokens) + max_new_tokens <= self.max_positions:
            return
        horizon = horizon or "max_new_tokens"
        if max_new_tokens >= self.max_positions:  # too long whatever the prompt
            path, detail = horizon, f"must be < the model's context of {self.max_positions} tokens"
        else:
            path = "prompt"
            detail = (f"the prompt ({prompt_tokens} tokens) plus {horizon} ({max_new_tokens}) exceeds the "
                      f"model's context of {self.max_positions} tokens")  # fmt: skip
        raise BadRequest(detail, path=path, error_type="context_length_exceeded")

    def _classified(self, err: BaseException, job: Job, stage: str) -> ServiceError:
        error = classify(err, job.spec.field_names)
        if error.status == 504:  # the deadline stopped the work
            self.metrics.abandoned.labels(stage).inc()
        elif error.status == 429:
            self.metrics.rejected.labels("compile_backlog").inc()
        elif error.status < 500:
            self.metrics.constraint_errors.labels(error.error_type).inc()
        return error

    # ------------------------------------------------------------------ decoding thread

    def _run(self) -> None:
        try:
            while self._cycle():
                pass
        except Exception:  # pragma: no cover - _cycle handles its own errors; this is the last resort
            log.exception("decoding thread crashed")
        finally:
            self._fail_all(Unavailable("the server is shutting down"))

    def _cycle(self) -> bool:
        """One round of the decoding thread: take in cancellations and new jobs, step the batch, hand out
        the finished. False when the engine stops."""
        admitted = self._admit()
        if admitted is None:
            return False
        for job in admitted:
            self._join(job)
        self.metrics.active.set(len(self._active))
        if self._active:
            self._retire(self._step())
        return True

    def _admit(self) -> list[Job] | None:
        """Wait for work; drop cancelled jobs from the batch; move ready jobs into free batch slots."""
        with self._wake:
            while not (self._stopping or self._ready or self._active or self._to_cancel):
                self._wake.wait()
            if self._stopping:
                return None
            to_cancel, self._to_cancel = self._to_cancel, []
            admitted, late = [], []
            now = time.perf_counter()
            while self._ready and len(self._active) + len(admitted) < self.max_batch_size:
                job = self._ready.popleft()
                self._waiting -= 1
                if job.deadline is not None and now >= job.deadline:  # too late to start: do not
                    job.state = "failed"
                    late.append(job)
                    continue
                job.state = "running"
                admitted.append(job)
            self.metrics.queue_depth.set(self._waiting)
        for job in late:  # outside the lock: nothing that hands a result on runs under it
            self.metrics.abandoned.labels("admission").inc()
            job.fail(Timeout("the request's deadline passed while it waited for a batch slot"))
        for job in to_cancel:
            if job in self._active:
                job.state = "cancelled"
                self._decoder.cancel(job.search)
                self._active.remove(job)
        return admitted

    def _join(self, job: Job) -> None:
        try:
            self._decoder.add(job.search)
        except Exception:  # noqa: BLE001 - an LM failure on one prompt fails that request only
            log.exception("prefill failed (request %s)", job.id)
            job.fail(ServiceError("prefill failed", error_type="internal_error"))
            return
        job.started_at = time.perf_counter()
        if job.observed:
            self.metrics.queue_time.observe(job.started_at - job.accepted_at)
        self._active.append(job)

    def _step(self) -> list[GuidedSearch]:
        """One decoding step for the whole batch; the searches that finished in it."""
        batch, rows = len(self._active), self._decoder.rows
        started = time.perf_counter()
        if TEST_STEP_DELAY_S:
            time.sleep(TEST_STEP_DELAY_S)
        try:
            finished = self._decoder.step()
        except Exception:  # noqa: BLE001 - fail the batch, keep serving
            log.exception("decoding step failed; failing %d requests", batch)
            for job in self._active:
                job.fail(ServiceError("decoding failed", error_type="internal_error"))
            self._active = []
            self._decoder = BatchDecoder(self.lm)
            self.metrics.active.set(0)
            return []
        done = time.perf_counter()
        self.steps += 1
        self.metrics.step_time.observe(done - started)
        self.metrics.batch_size.observe(batch)
        self.metrics.batch_rows.observe(rows)
        for job in self._active:
            if job.first_token_at is None:
                job.first_token_at = done
                if job.observed:
                    self.metrics.ttft.observe(done - job.accepted_at)
        return finished

    def _retire(self, finished: list[GuidedSearch]) -> None:
        """Resolve (or fail) the jobs whose searches finished."""
        if not finished:
            return
        ids = {id(search) for search in finished}
        now, still = time.perf_counter(), []
        for job in self._active:
            if id(job.search) not in ids:
                still.append(job)
                continue
            job.state = "done"
            if job.search.error is not None:
                log.error("request %s failed in a decoding step: %r", job.id, job.search.error)
                job.fail(classify(job.search.error, job.spec.field_names))
            else:
                self._observe_finished(job, now)
                job.resolve(job.search.output)
                seconds = now - (job.started_at or now)
                weight = 1.0 / min(self._finished + 1, 20)  # a running mean over about the last 20
                self._seconds_per_request += weight * (seconds - self._seconds_per_request)
                self._finished += 1
        self._active = still
        self.metrics.active.set(len(self._active))

    def _observe_finished(self, job: Job, now: float) -> None:
        """Per-request metrics of a computed request (vLLM's request_prompt_tokens, request_generation_tokens,
        finish reasons), unless it is the warm-up."""
        if not job.observed:
            return
        out = job.search.output
        tokens = sum(len(s.token_ids) for s in out.sequences)
        self.metrics.generated_tokens.inc(tokens)
        self.metrics.prompt_tokens.inc(out.prompt_tokens)
        self.metrics.prompt_length.observe(out.prompt_tokens)
        self.metrics.generation_length.observe(tokens)
        longest = max((len(s.token_ids) for s in out.sequences), default=0)
        if longest > 1 and job.first_token_at is not None:
            self.metrics.tpot.observe((now - job.first_token_at) / (longest - 1))
        for seq in out.sequences:
            outcome = "satisfied" if seq.constraint_satisfied else "not_satisfied"
            if job.spec.constraint is None:
                outcome = "unconstrained"
            self.metrics.constraint_outcomes.labels(outcome).inc()
            self.metrics.finish_reasons.labels(seq.finish_reason).inc()

    def _fail_all(self, error: ServiceError) -> None:
        with self._wake:
            jobs = list(self._ready) + self._active
            self._ready.clear()
            self._active = []
        for job in jobs:
            job.fail(error)
