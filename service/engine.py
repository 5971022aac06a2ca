"""The engine: bounded admission, constraint compilation in worker processes, preparation off the event loop,
and continuous batching on one dedicated decoding thread (service/batch_loop.py).

    submit() ──> [compile pool: worker processes, fair per client] ──> CompiledConstraint ──> [prepare
    threads: the guide's precompute, the first state] ──> ready queue ──> decoding thread (BatchLoop)
                                                                                       │
    asyncio futures / per-request event queues  <── loop.call_soon_threadsafe ─────────┘

The routes reach it through service/serving.py as an `EngineClient` (submit, cancel), the shape of vLLM's
EngineClient. Constraint and parameter errors surface from `submit` before anything is queued for decoding,
as the library raised them (pc_core.errors, each with its ErrorKind); service/serving.py says them as HTTP
(service/errors.py:classify). Every stage honours the request's deadline: a compile not yet started is
dropped, a running one stops at its time budget (cut to the deadline), the precompute stops, a request still
waiting for a batch slot is not started, and `cancel` (client gone, deadline passed) drops a running
request's rows at the next step boundary. The event loop never runs model code.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pc_core.compiled_constraint import CompiledConstraint
from pc_core.constraints.compiler import compile_constraint
from pc_core.errors import BlocklistInteraction, ConstraintTooComplex, ErrorKind
from pc_core.preparation import prepare
from pc_core.search import GuidedSearch
from pc_core.unguided import prepare_unguided
from service.batch_loop import BatchLoop
from service.compile_pool import CompilePool
from service.errors import BadRequest, Timeout
from service.generation import GenerationSpec
from service.job import Job
from service.limits import check_context
from service.metrics import Metrics

__all__ = ["Engine", "EngineClient", "GenerationSpec", "Job"]


class EngineClient(Protocol):
    """What serving asks of an engine (tests stand in a fake with the same shape)."""

    queue_depth: int
    active: int

    async def submit(self, generation: GenerationSpec, stream: bool = False, client: str = "anonymous",
                     deadline: float | None = None, observed: bool = True) -> Job: ...  # fmt: skip

    def cancel(self, job: Job, reason: str = "disconnect") -> bool: ...

    def stop(self) -> None: ...


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
        self.max_positions = max_positions
        self.batches = BatchLoop(lm, metrics, max_batch_size, max_queue)
        self._pool = ThreadPoolExecutor(prepare_workers, thread_name_prefix="pcgen-prepare")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.batches.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.batches.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.compile_pool is not None:
            self.compile_pool.shutdown()

    @property
    def queue_depth(self) -> int:
        return self.batches.queue_depth

    @property
    def active(self) -> int:
        return self.batches.active

    # ------------------------------------------------------------------ event loop side

    async def submit(
        self,
        generation: GenerationSpec,
        stream: bool = False,
        client: str = "anonymous",
        deadline: float | None = None,
        observed: bool = True,
    ) -> Job:
        """Admit, compile, prepare (off the loop) and queue for decoding. Raises QueueFull, Timeout or
        Unavailable, BadRequest for the prompt, and the library's errors (constraint, parameters) as raised."""
        loop = asyncio.get_running_loop()
        self.batches.reserve(deadline)
        job = Job(generation, loop, loop.create_future(), asyncio.Queue() if stream else None, client=client,
                  deadline=deadline, observed=observed)  # fmt: skip
        try:
            job.search = await self._prepared(job)
        except BaseException:
            self.batches.release(job)
            raise
        self.batches.enqueue(job)
        return job

    def cancel(self, job: Job, reason: str = "disconnect") -> bool:
        """Stop a job: dropped from the queue now, or from the batch at the next step. False when it had
        already finished."""
        return self.batches.cancel(job, reason)

    async def _prepared(self, job: Job, blocklist_mask: bool = True) -> GuidedSearch:
        """Compile, then prepare in a preparation thread. When the blocklist mask could dead-end the rest of
        the constraint (BlocklistInteraction), the exact product is compiled the same way, and prepared."""
        compiling = time.perf_counter()
        compiled = await self._compile(job, blocklist_mask)
        job.compile_ms += (time.perf_counter() - compiling) * 1000
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, job, compiled)
        except BlocklistInteraction:
            if not blocklist_mask:
                raise
            return await self._prepared(job, blocklist_mask=False)

    async def _compile(self, job: Job, blocklist_mask: bool = True) -> CompiledConstraint | None:
        """The request's CompiledConstraint: its automaton cached, or compiled quickly in a prepare thread, or
        else by the compile pool (without a pool: not compiled yet, prepare compiles it). Waits for the pool
        without holding a thread; cancelling the request drops a compile that has not started."""
        if job.generation.constraint is None:  # nothing to compile
            return None
        params, pool = job.generation.params, self.compile_pool
        try:
            compiled = CompiledConstraint.for_request(job.generation.constraint, params, len(self.tokenizer))
            if pool is None:
                return compiled
            judged = compiled.judged  # what the automaton accepts: the constraint with its affixes and bans
            limits = (params.max_states, params.time_budget_s)
            cached = pool.cached(judged, self.tokenizer, *limits, blocklist_mask)
            if not cached and pool.quick_for(job.client, judged):
                pool.check_room(job.client)
                quick = await asyncio.get_running_loop().run_in_executor(
                    self._pool, pool.try_quick, judged, self.tokenizer, params.max_states, blocklist_mask
                )
                if quick is not None:
                    return compiled.with_dfa(quick)
            future = pool.submit(
                job.client, judged, self.tokenizer, *limits, blocklist_mask, deadline=job.deadline
            )
            try:
                return compiled.with_dfa(await asyncio.wrap_future(future))
            except ConstraintTooComplex:  # past the explicit budget: the lazy automaton (pc_core.lazy_guide)
                if params.guide == "exact":
                    raise
                lazy = await asyncio.get_running_loop().run_in_executor(
                    self._pool, lambda: compile_constraint(judged, self.tokenizer, *limits, lazy=True)
                )
                return compiled.with_dfa(lazy)
        except Exception as err:
            self._count_failure(err, "compile")
            raise

    # ------------------------------------------------------------------ preparation (thread pool)

    def _prepare(self, job: Job, compiled: CompiledConstraint | None) -> GuidedSearch:
        """The request's GuidedSearch: the guide's precompute (stopped at the deadline) and first state."""
        generation, params = job.generation, job.generation.params
        if job.deadline is not None and time.perf_counter() >= job.deadline:
            self.metrics.abandoned.labels("prepare").inc()
            raise Timeout("the request's deadline passed before it could be prepared")
        prompt_ids = self._prompt_ids(generation.prompt)
        check_context(self.max_positions, len(prompt_ids), params.max_new_tokens,
                      generation.field_names.get("max_new_tokens"))  # fmt: skip
        on_stream = job.push_event if job.events is not None else None
        try:
            if compiled is None:  # no constraint: the LM's own distribution, no automaton or guide
                return prepare_unguided(self.tokenizer, prompt_ids, params, on_stream,
                                        device=next(self.lm.parameters()).device)  # fmt: skip
            search = prepare(self.tokenizer, self.hmm, compiled, prompt_ids, params, on_stream,
                             deadline=job.deadline)  # fmt: skip
        except Exception as err:
            self._count_failure(err, "prepare")
            raise
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

    def _count_failure(self, err: BaseException, stage: str) -> None:
        """A library error in the metrics, by its kind: the deadline stopped the work, the compile backlog
        was full, or the request's constraint or parameters were at fault."""
        kind = getattr(err, "kind", None)
        if kind is ErrorKind.TIMEOUT:
            self.metrics.abandoned.labels(stage).inc()
        elif kind is ErrorKind.COMPILE_BACKLOG_FULL:
            self.metrics.rejected.labels("compile_backlog").inc()
        elif isinstance(kind, ErrorKind) and kind.request_fault:
            self.metrics.constraint_errors.labels(kind.value).inc()
