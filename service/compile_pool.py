"""Constraint compilation in worker processes, admitted fairly per client.

Compiling a constraint is pure Python; in a thread of the serving process it holds the GIL and starves the
decoding thread (one client looping a 1 KB constraint made an ordinary request 170x slower). So it runs in
worker processes (spawned, each holding the tokenizer's tables), and the compiles waiting for a worker are
admitted round-robin per client (API key or address): a client holds at most its share of the workers while
others wait, and at most `max_backlog` compiles queued, so one client's backlog cannot delay another's.

A constraint first gets a quick attempt in the calling thread (QUICK_BUDGET_S): ordinary constraints finish
there and never queue. Results and rejections land in this process's DFA cache (pc_core.constraints.compiler.COMPILED), so a
repeated constraint, accepted or rejected, costs a lookup. A compile whose request's deadline has passed is
never started; one that is running gets at most the time left (its budget), and the compiler stops there.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from pc_core.constraints.compiler import COMPILED, compile_constraint, compile_key
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import ConstraintTooComplex, DeadlineExceeded, PcgenError

log = logging.getLogger(__name__)

_TOKENIZER: Any = None  # in a worker process


def _init_worker(tokenizer: Any, cache_bytes: int) -> None:
    global _TOKENIZER
    from pc_core.constraints.vocab import vocab_tables
    from pc_core.constraints.words import load_dictionaries

    _TOKENIZER = tokenizer
    COMPILED.resize(cache_bytes)
    vocab_tables(tokenizer)
    load_dictionaries()


def _compile(constraint: Any, max_states: int, time_budget_s: float, blocklist_mask: bool) -> TokenDFA:
    return compile_constraint(constraint, _TOKENIZER, max_states, time_budget_s, blocklist_mask)


QUICK_BUDGET_S = 0.05
SLOW_COMPILE_S = 0.5
SLOW_CLIENT_S = 10.0
MAX_SLOW_CLIENTS = 10_000  # an ordinary constraint compiles in a few milliseconds: no need for a worker


class CompileBacklogFull(PcgenError):
    """This client already has its maximum of compiles waiting."""


@dataclass(eq=False)
class _Task:
    client: str
    args: tuple  # (constraint, max_states, time_budget_s, blocklist_mask)
    key: tuple
    deadline: float | None
    future: Future = field(default_factory=Future)  # this process's view of the result
    capped: bool = False  # its time budget was cut to the request's deadline
    started: float = 0.0  # time.monotonic() when a worker took it


class CompilePool:
    def __init__(self, tokenizer: Any, workers: int, max_backlog: int, cache_bytes: int, metrics: Any = None):
        self.tokenizer, self.workers, self.max_backlog, self.metrics = (
            tokenizer,
            workers,
            max_backlog,
            metrics,
        )
        self._start = (tokenizer, cache_bytes)
        self._executor = self._new_executor()
        self._lock = threading.Lock()
        self._queues: OrderedDict[str, deque[_Task]] = OrderedDict()  # round-robin order of waiting clients
        self._running: dict[str, int] = {}
        self._slow: OrderedDict[str, float] = (
            OrderedDict()
        )  # client -> when a constraint of its needed a worker
        self.abandoned = 0  # compiles dropped or stopped because their request's deadline passed

    def _abandon(self) -> None:
        self.abandoned += 1
        if self.metrics is not None:
            self.metrics.abandoned.labels("compile").inc()

    def _new_executor(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and torch
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=self._start
        )

    def warm_up(self) -> None:
        """Start the workers (they load the tokenizer's tables) before the first request needs one."""
        futures = [self._executor.submit(_compile, "warmup", 64, 60.0, True) for _ in range(self.workers)]
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(
        self,
        client: str,
        constraint: Any,
        tokenizer: Any,
        max_states: int,
        time_budget_s: float,
        blocklist_mask: bool = True,
        deadline: float | None = None,
    ) -> Future:
        """A future of compile_constraint's result (done at once on a cache hit), computed in a worker.
        Raises CompileBacklogFull; the future holds what compile_constraint raises, or DeadlineExceeded.
        Cancelling the future drops a compile that has not started."""
        key = compile_key(constraint, tokenizer, max_states, time_budget_s, blocklist_mask)
        task = _Task(client, (constraint, max_states, time_budget_s, blocklist_mask), key, deadline)
        cached = COMPILED.get(key)
        if isinstance(cached, ConstraintTooComplex):
            task.future.set_exception(cached.fresh())
        elif cached is not None:
            task.future.set_result(cached)
        else:
            self.check_room(client)
            with self._lock:
                self._queues.setdefault(client, deque()).append(task)
                self._dispatch()
        return task.future

    def cached(
        self,
        constraint: Any,
        tokenizer: Any,
        max_states: int,
        time_budget_s: float,
        blocklist_mask: bool = True,
    ) -> bool:
        """Whether the full compile's result or rejection is known here (then `submit` answers at once)."""
        return (
            COMPILED.get(compile_key(constraint, tokenizer, max_states, time_budget_s, blocklist_mask))
            is not None
        )

    def check_room(self, client: str) -> None:
        """Raise CompileBacklogFull when `client` already has its maximum of compiles waiting (checked before
        any work is spent on its next one)."""
        with self._lock:
            waiting = len(self._queues.get(client, ()))
        if waiting >= self.max_backlog:
            raise CompileBacklogFull(
                f"{waiting} constraints of this client are already waiting to compile; retry later"
            )

    def quick_for(self, client: str) -> bool:
        """Whether `client`'s next constraint gets the quick attempt: not within SLOW_CLIENT_S of a constraint
        of its that a worker took over SLOW_COMPILE_S on or rejected (a client sending slow constraints would
        otherwise spend the quick budget of this process's GIL on every one of them)."""
        with self._lock:
            slow = self._slow.get(client)
        return slow is None or time.monotonic() - slow > SLOW_CLIENT_S

    def _note_slow(self, client: str) -> None:
        with self._lock:
            self._slow.pop(client, None)
            self._slow[client] = time.monotonic()
            while len(self._slow) > MAX_SLOW_CLIENTS:
                self._slow.popitem(last=False)

    def try_quick(self, constraint: Any, tokenizer: Any, max_states: int, blocklist_mask: bool = True) -> Any:
        """Compile in the calling thread within QUICK_BUDGET_S: the DFA, or None when it needs longer (then it
        goes to a worker). Ordinary constraints take this path, so they never wait for a worker that another
        client's slow constraint holds; a slow one costs this process at most the quick budget, once (the
        "out of time" is cached). A rejection by the state cap within the budget is final and raised."""
        try:
            return compile_constraint(constraint, tokenizer, max_states, QUICK_BUDGET_S, blocklist_mask)
        except ConstraintTooComplex as err:
            if err.out_of_time:
                return None
            raise

    def compile(self, client: str, constraint: Any, tokenizer: Any, *args: Any, **kwargs: Any) -> TokenDFA:
        """`submit`, waiting for the result (a preparation thread; it does not hold the GIL while waiting)."""
        deadline = kwargs.get("deadline")
        future = self.submit(client, constraint, tokenizer, *args, **kwargs)
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(
                "compiling the constraint did not finish before the request's deadline"
            ) from None

    # ------------------------------------------------------------------ scheduling (under the lock)

    def _dispatch(self) -> None:
        """Start waiting compiles on free workers, one client at a time in turn, each client up to its share."""
        while sum(self._running.values()) < self.workers and self._queues:
            share = max(
                1, self.workers // len(set(self._queues) | {c for c, n in self._running.items() if n})
            )
            for client in list(self._queues):
                if self._running.get(client, 0) < share:
                    break
            else:
                return
            queue = self._queues.pop(client)
            task = queue.popleft()
            if queue:
                self._queues[client] = queue  # to the back of the round
            if task.future.cancelled():  # its request went away while it waited
                self._abandon()
            elif task.deadline is not None and time.perf_counter() >= task.deadline:
                self._abandon()
                task.future.set_exception(DeadlineExceeded("the request's deadline passed before compiling"))
            else:
                self._submit(task)

    def _submit(self, task: _Task) -> None:
        constraint, max_states, budget, mask = task.args
        if task.deadline is not None and task.deadline - time.perf_counter() < budget:
            budget, task.capped = max(0.01, task.deadline - time.perf_counter()), True
        log.debug("compile for %s starts (budget %.2f s)", task.client, budget)
        self._running[task.client] = self._running.get(task.client, 0) + 1
        task.started = time.monotonic()
        try:
            remote = self._executor.submit(_compile, constraint, max_states, budget, mask)
        except BrokenProcessPool:
            log.error("the compile pool broke; starting a new one")
            self._executor = self._new_executor()
            remote = self._executor.submit(_compile, constraint, max_states, budget, mask)
        remote.add_done_callback(lambda done, task=task: self._finished(task, done))

    def _finished(self, task: _Task, remote: Future) -> None:
        error = remote.exception()
        if isinstance(error, ConstraintTooComplex) or time.monotonic() - task.started > SLOW_COMPILE_S:
            self._note_slow(task.client)
        log.debug("compile for %s finished: %s", task.client, type(error).__name__ if error else "ok")
        if error is None:
            COMPILED.put(task.key, remote.result())
        elif isinstance(error, ConstraintTooComplex) and error.out_of_time and task.capped:
            self._abandon()  # stopped at the request's deadline, not rejected: a later request may retry it
            error = DeadlineExceeded("compiling the constraint did not finish before the request's deadline")
        elif isinstance(error, ConstraintTooComplex):
            COMPILED.put(task.key, error.fresh())  # rejected by the cap or its own budget: remember it
        with self._lock:
            self._running[task.client] -= 1
            if not task.future.done():
                if error is None:
                    task.future.set_result(remote.result())
                else:
                    task.future.set_exception(error)
            self._dispatch()
