"""The decoding thread and the queue in front of it: continuous batching (docs/architecture.md).

    Engine.submit ──reserve──> [preparing: compile, prepare] ──enqueue──> ready queue
    decoding thread: admit ready jobs between steps (up to max_batch_size) ──> BatchDecoder.step() ──> retire

The queue bound counts accepted jobs that are not decoding yet (preparing, or ready and waiting for a slot):
past it `reserve` raises QueueFull (429). A job still waiting for a slot when its deadline passes is not
started; `cancel` drops a queued job now, a running one at the next step boundary. Nothing that hands a result
on (Job.resolve / fail) runs under the lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from pc_core.decoding import BatchDecoder
from pc_core.search import GuidedSearch
from service.errors import QueueFull, ServiceError, Timeout, Unavailable
from service.job import Job
from service.metrics import Metrics

# Test-only hook: each decoding step takes at least this long, so a test of what happens to a request that is
# still decoding at its deadline does not depend on how fast the machine decodes.
TEST_STEP_DELAY_S = float(os.environ.get("PCGEN_TEST_STEP_DELAY_S", "0") or 0)

log = logging.getLogger(__name__)


class BatchLoop:
    def __init__(self, lm: Any, metrics: Metrics, max_batch_size: int, max_queue: int) -> None:
        self.lm, self.metrics = lm, metrics
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self._wake = threading.Condition(threading.Lock())
        self._ready: deque[Job] = deque()
        self._to_cancel: list[Job] = []
        self._waiting = 0  # accepted, not decoding yet (preparing or ready)
        self._active: list[Job] = []  # decoding thread only
        self._stopping = False
        self._decoder = BatchDecoder(lm)
        self._thread = threading.Thread(target=self._run, name="pcgen-decode", daemon=True)
        self.steps = 0
        self._finished = 0  # requests decoded, and an average of how long that took (for admission)
        self._seconds_per_request = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def active(self) -> int:
        return len(self._active)

    # ------------------------------------------------------------------ event loop side

    def reserve(self, deadline: float | None) -> None:
        """Count a new request as waiting, or refuse it: shutting down, the queue full (429), or the queue
        ahead longer than its deadline allows (503 with Retry-After)."""
        with self._wake:
            if self._stopping:
                raise Unavailable("the server is shutting down")
            if self._waiting >= self.max_queue:
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFull(
                    f"the queue is full ({self.max_queue} requests waiting); retry later",
                    headers={"Retry-After": "1"},
                )
            wait = self._expected_wait_s()
            if deadline is not None and wait is not None and time.perf_counter() + wait > deadline:
                self.metrics.abandoned.labels("admission").inc()
                raise Unavailable(
                    f"the queue ahead would take about {wait:.1f} s, past this request's deadline; retry later",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            self._set_waiting(self._waiting + 1)

    def release(self, job: Job) -> None:
        """A reserved job that failed before it was queued (compile or prepare error, cancelled)."""
        with self._wake:
            job.state = "failed"
            self._set_waiting(self._waiting - 1)

    def enqueue(self, job: Job) -> None:
        """A prepared job joins the ready queue; the decoding thread admits it between steps."""
        with self._wake:
            if self._stopping:
                self._waiting -= 1
                raise Unavailable("the server is shutting down")
            job.state = "queued"
            job.queued_at = time.perf_counter()
            self._ready.append(job)
            self._wake.notify()

    def cancel(self, job: Job, reason: str = "disconnect") -> bool:
        """Stop a job (from the event loop): dropped from the queue now, or from the batch at the next step.
        False when it had already finished."""
        with self._wake:
            if job.state == "queued":
                self._ready.remove(job)
                self._set_waiting(self._waiting - 1)
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

    def _expected_wait_s(self) -> float | None:
        """How long a request accepted now would wait for a batch slot, from the recent time requests took
        (None until enough have finished to say). Callers hold the lock."""
        if self._finished < 10:
            return None
        rounds = (self._waiting + len(self._active)) // self.max_batch_size
        return rounds * self._seconds_per_request

    def _set_waiting(self, waiting: int) -> None:  # callers hold the lock
        self._waiting = waiting
        self.metrics.queue_depth.set(waiting)

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
        the finished. False when the loop stops."""
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
        """Resolve (or fail, with the library's error: service/serving.py says it as HTTP) the jobs whose
        searches finished."""
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
                job.fail(job.search.error)
            else:
                _observe_finished(self.metrics, job, now)
                job.resolve(job.search.output)
                seconds = now - (job.started_at or now)
                weight = 1.0 / min(self._finished + 1, 20)  # a running mean over about the last 20
                self._seconds_per_request += weight * (seconds - self._seconds_per_request)
                self._finished += 1
        self._active = still
        self.metrics.active.set(len(self._active))

    def _fail_all(self, error: ServiceError) -> None:
        with self._wake:
            jobs = list(self._ready) + self._active
            self._ready.clear()
            self._active = []
        for job in jobs:
            job.fail(error)


def _observe_finished(metrics: Metrics, job: Job, now: float) -> None:
    """Per-request metrics of a computed request (vLLM's request_prompt_tokens, request_generation_tokens,
    finish reasons), unless it is the warm-up."""
    if not job.observed:
        return
    out = job.search.output
    tokens = sum(len(s.token_ids) for s in out.sequences)
    metrics.generated_tokens.inc(tokens)
    metrics.prompt_tokens.inc(out.prompt_tokens)
    metrics.prompt_length.observe(out.prompt_tokens)
    metrics.generation_length.observe(tokens)
    longest = max((len(s.token_ids) for s in out.sequences), default=0)
    if longest > 1 and job.first_token_at is not None:
        metrics.tpot.observe((now - job.first_token_at) / (longest - 1))
    for seq in out.sequences:
        outcome = "satisfied" if seq.constraint_satisfied else "not_satisfied"
        if job.generation.constraint is None:
            outcome = "unconstrained"
        metrics.constraint_outcomes.labels(outcome).inc()
        metrics.finish_reasons.labels(seq.finish_reason).inc()
