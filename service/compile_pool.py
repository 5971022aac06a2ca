"""Constraint compilation in worker processes, in two lanes by estimated cost, admitted fairly per client.

Compiling a constraint is pure Python; in a thread of the serving process it holds the GIL and starves the
decoding thread (one client looping a 1 KB constraint made an ordinary request 170x slower). So it runs in
worker processes (forked from a fork server that preloaded the compiler and the dictionaries; each holds the
tokenizer's tables).

Clients cannot be told apart reliably (without API keys, or behind a proxy, every client is one address), so
the pool judges the work, not the client: `estimated_cost` reads the constraint's structure (keywords x
variants x counters) before any compiling. Obviously heavy constraints go to the heavy lane: worker processes
at a lower OS priority (so the decoding thread keeps its core), admitted round-robin per client. Everything
else goes to the light lane, whose own worker takes compiles of at most LIGHT_BUDGET_S: a constraint the
estimate misjudged moves on to the heavy lane when it overruns, so a heavy compile never delays a light one.
A light constraint first gets a quick attempt in the calling thread (QUICK_BUDGET_S), and ordinary
constraints finish there.

Results and rejections land in this process's DFA cache (pc_core.constraints.compiler.COMPILED), so a
repeated constraint, accepted or rejected, costs a lookup. A compile whose request's deadline has passed is
never started; one that is running gets at most the time left (its budget), and the compiler stops there.

Locking: the scheduling state is guarded by one lock, and nothing that can run a callback happens under it
(completing a future, submitting to an executor, registering a done-callback, which runs at once when the
worker has already answered). Scheduling decisions are taken under the lock and carried out after it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from pc_core.constraints.compiler import COMPILED, compile_constraint, compile_key
from pc_core.constraints.dfa import TokenDFA
from pc_core.errors import CompileBacklogFull, ConstraintTooComplex, DeadlineExceeded
from pc_core.lifetime import exit_with
from service.compile_cost import HEAVY_COST, estimated_cost

log = logging.getLogger(__name__)

_TOKENIZER: Any = None  # in a worker process

QUICK_BUDGET_S = 0.05  # in the calling thread, light constraints only
LIGHT_BUDGET_S = 1.0  # in the light lane's worker; longer compiles move to the heavy lane
HEAVY_NICE = 10  # the heavy lane's OS priority offset
SLOW_COMPILE_S = 0.5
SLOW_CLIENT_S = 10.0
MAX_SLOW_CLIENTS = 10_000


def _init_worker(server_pid: int, tokenizer: Any, cache_bytes: int, nice: int) -> None:
    global _TOKENIZER
    from pc_core.constraints.vocab import vocab_tables
    from pc_core.constraints.words import load_dictionaries

    exit_with(server_pid)  # the parent is the fork server, which lives as long as its workers
    if nice:
        os.nice(nice)
    _TOKENIZER = tokenizer
    COMPILED.resize(cache_bytes)
    vocab_tables(tokenizer)
    load_dictionaries()


def _compile(constraint: Any, max_states: int, time_budget_s: float, blocklist_mask: bool) -> TokenDFA:
    return compile_constraint(constraint, _TOKENIZER, max_states, time_budget_s, blocklist_mask)


@dataclass(eq=False)
class _Task:
    client: str
    args: tuple  # (constraint, max_states, time_budget_s, blocklist_mask)
    key: tuple
    deadline: float | None
    lane: str
    future: Future = field(default_factory=Future)  # this process's view of the result
    capped_by: str | None = None  # "deadline" or "light": what cut its time budget below its own
    started: float = 0.0  # time.monotonic() when a worker took it


class _Lane:
    """Worker processes of one priority and the compiles waiting for them, per client in round-robin order."""

    def __init__(self, name: str, workers: int, start: tuple) -> None:
        self.name, self.workers, self._start = name, workers, start
        self.queues: OrderedDict[str, deque[_Task]] = OrderedDict()
        self.running: dict[str, int] = {}
        self._executor_lock = threading.Lock()  # replacing a broken executor; no callback runs under it
        self.executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # Workers fork from a fork server (a fresh interpreter, never a fork of this process with its threads and
        # torch) that has loaded what they need once: service/compile_preload.py.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["service.compile_preload"])
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_worker, initargs=self._start
        )

    def submit(self, *args: Any) -> Future:
        with self._executor_lock:
            try:
                return self.executor.submit(_compile, *args)
            except BrokenProcessPool:
                log.error("the %s compile lane broke; starting new workers", self.name)
                self.executor = self._new_executor()
                return self.executor.submit(_compile, *args)

    def next_task(self) -> _Task | None:
        """The next compile to start, if a worker is free: one client at a time in turn, each up to its
        share of the workers. Under the pool's lock."""
        if sum(self.running.values()) >= self.workers or not self.queues:
            return None
        busy = set(self.queues) | {c for c, n in self.running.items() if n}
        share = max(1, self.workers // len(busy))
        client = next((c for c in self.queues if self.running.get(c, 0) < share), None)
        if client is None:
            return None
        queue = self.queues.pop(client)
        task = queue.popleft()
        if queue:
            self.queues[client] = queue  # to the back of the round
        return task

    def pids(self) -> list[int]:
        return [p.pid for p in (self.executor._processes or {}).values()]  # noqa: SLF001 - for health only

    def shutdown(self) -> None:
        """Stop now: cancel what waits, end the workers (a compile in progress is abandoned) and join them,
        so that no worker and no semaphore outlives the pool."""
        processes = list((self.executor._processes or {}).values())  # noqa: SLF001
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        self.executor.shutdown(wait=True)
        for process in processes:
            process.join(5)


class CompilePool:
    def __init__(
        self,
        tokenizer: Any,
        workers: int,
        max_backlog: int,
        cache_bytes: int,
        metrics: Any = None,
        light_workers: int = 1,
    ) -> None:
        self.tokenizer, self.workers, self.max_backlog, self.metrics = (
            tokenizer,
            workers,
            max_backlog,
            metrics,
        )
        self._lock = threading.Lock()
        self._lanes = {
            "light": _Lane("light", light_workers, (os.getpid(), tokenizer, cache_bytes, 0)),
            "heavy": _Lane("heavy", workers, (os.getpid(), tokenizer, cache_bytes, HEAVY_NICE)),
        }
        self._slow: OrderedDict[str, float] = OrderedDict()  # client -> when a constraint of its needed long
        self.abandoned = 0  # compiles dropped or stopped because their request's deadline passed

    def executors(self) -> list[ProcessPoolExecutor]:
        return [lane.executor for lane in self._lanes.values()]

    def worker_pids(self) -> list[int]:
        return [pid for lane in self._lanes.values() for pid in lane.pids()]

    def workers_alive(self) -> dict[str, int]:
        """Live worker processes per lane (a health metric)."""
        out = {}
        for name, lane in self._lanes.items():
            processes = (lane.executor._processes or {}).values()  # noqa: SLF001
            out[name] = sum(p.is_alive() for p in processes)
        return out

    def warm_up(self) -> None:
        """Start the workers (they load the tokenizer's tables) before the first request needs one."""
        futures = [lane.executor.submit(_compile, "warmup", 64, 60.0, True)
                   for lane in self._lanes.values() for _ in range(lane.workers)]  # fmt: skip
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown()

    # ------------------------------------------------------------------ callers

    def lane_of(self, constraint: Any) -> str:
        return "heavy" if estimated_cost(constraint) > HEAVY_COST else "light"

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
        task = _Task(client, (constraint, max_states, time_budget_s, blocklist_mask), key, deadline,
                     self.lane_of(constraint))  # fmt: skip
        cached = COMPILED.get(key)
        if isinstance(cached, ConstraintTooComplex):
            task.future.set_exception(cached.fresh())
        elif cached is not None:
            task.future.set_result(cached)
        else:
            with self._lock:
                self._check_room_locked(client)
                self._lanes[task.lane].queues.setdefault(client, deque()).append(task)
                actions = self._dispatch_locked()
            self._carry_out(actions)
        return task.future

    def cached(self, constraint: Any, tokenizer: Any, max_states: int, time_budget_s: float,
               blocklist_mask: bool = True) -> bool:  # fmt: skip
        """Whether the full compile's result or rejection is known here (then `submit` answers at once)."""
        key = compile_key(constraint, tokenizer, max_states, time_budget_s, blocklist_mask)
        return COMPILED.get(key) is not None

    def check_room(self, client: str) -> None:
        """Raise CompileBacklogFull when `client` already has its maximum of compiles waiting (checked before
        any work is spent on its next one)."""
        with self._lock:
            self._check_room_locked(client)

    def _check_room_locked(self, client: str) -> None:
        waiting = sum(len(lane.queues.get(client, ())) for lane in self._lanes.values())
        if waiting >= self.max_backlog:
            raise CompileBacklogFull(
                f"{waiting} constraints of this client are already waiting to compile; retry later"
            )

    def quick_for(self, client: str, constraint: Any = None) -> bool:
        """Whether this constraint gets the quick attempt in the calling thread: a light one (by its estimated
        cost), from a client that has not just sent one that took a worker long or was rejected (a client
        sending slow constraints would otherwise spend the quick budget of this process's GIL on each)."""
        if constraint is not None and self.lane_of(constraint) == "heavy":
            return False
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
        goes to a worker). A rejection by the state cap within the budget is final and raised."""
        if self.metrics is not None:
            self.metrics.compiles.labels(lane="quick").inc()
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

    # ------------------------------------------------------------------ scheduling

    def _abandon(self) -> None:
        self.abandoned += 1
        if self.metrics is not None:
            self.metrics.abandoned.labels("compile").inc()

    def _dispatch_locked(self) -> list[tuple]:
        """What to do next, decided under the lock and carried out after it (`_carry_out`): compiles to
        start, futures to fail."""
        actions: list[tuple] = []
        for lane in self._lanes.values():
            while (task := lane.next_task()) is not None:
                if task.future.cancelled():  # its request went away while it waited
                    self._abandon()
                elif task.deadline is not None and time.perf_counter() >= task.deadline:
                    self._abandon()
                    error = DeadlineExceeded("the request's deadline passed before compiling")
                    actions.append(("fail", task, error))
                else:
                    lane.running[task.client] = lane.running.get(task.client, 0) + 1
                    task.started = time.monotonic()
                    actions.append(("start", task, None))
        return actions

    def _carry_out(self, actions: list[tuple]) -> None:
        """Start compiles and complete futures; never under the lock (either may run callbacks)."""
        for what, task, error in actions:
            if what == "fail":
                _settle(task.future, error=error)
                continue
            constraint, max_states, budget, mask = task.args
            task.capped_by = None
            if task.lane == "light" and budget > LIGHT_BUDGET_S:
                budget, task.capped_by = LIGHT_BUDGET_S, "light"
            if task.deadline is not None and task.deadline - time.perf_counter() < budget:
                budget, task.capped_by = max(0.01, task.deadline - time.perf_counter()), "deadline"
            log.debug("compile for %s starts in the %s lane (budget %.2f s)", task.client, task.lane, budget)
            if self.metrics is not None:
                self.metrics.compiles.labels(lane=task.lane).inc()
            try:
                remote = self._lanes[task.lane].submit(constraint, max_states, budget, mask)
            except Exception as err:  # noqa: BLE001 - the pool could not start it: the request fails with it
                self._finished(task, None, err)
                continue
            remote.add_done_callback(lambda done, task=task: self._finished(task, done))

    def _finished(self, task: _Task, remote: Future | None, failure: BaseException | None = None) -> None:
        """A worker answered (in the executor's thread, or in the caller when it had answered already)."""
        error = failure if remote is None else remote.exception()
        result = None if error is not None else remote.result()
        took = time.monotonic() - task.started
        out_of_time = isinstance(error, ConstraintTooComplex) and error.out_of_time
        overran_light = out_of_time and task.capped_by == "light"
        if not overran_light and (isinstance(error, ConstraintTooComplex) or took > SLOW_COMPILE_S):
            self._note_slow(task.client)
        log.debug("compile for %s finished: %s", task.client, type(error).__name__ if error else "ok")
        if overran_light:
            error = None  # misjudged as light: it goes on in the heavy lane with its full budget
        elif error is None:
            COMPILED.put(task.key, result)
        elif out_of_time and task.capped_by == "deadline":
            self._abandon()  # stopped at the request's deadline, not rejected: a later request may retry it
            error = DeadlineExceeded("compiling the constraint did not finish before the request's deadline")
        elif isinstance(error, ConstraintTooComplex):
            COMPILED.put(task.key, error.fresh())  # rejected by the cap or its own budget: remember it
        with self._lock:
            self._lanes[task.lane].running[task.client] -= 1
            if overran_light:
                task.lane = "heavy"
                self._lanes["heavy"].queues.setdefault(task.client, deque()).appendleft(task)
            actions = self._dispatch_locked()
        if not overran_light:
            _settle(task.future, result, error)
        self._carry_out(actions)


def _settle(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Complete `future` unless its caller cancelled it meanwhile."""
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass
