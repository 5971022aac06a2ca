"""The compile pool's scheduling: no callback runs under a lock it takes (issue: a compile whose worker had
already answered when its done-callback was registered deadlocked the whole server), lanes by estimated cost,
and workers that exit with their parent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future, ProcessPoolExecutor

import pytest

from pc_core.constraints.compiler import COMPILED
from service.compile_pool import CompilePool, estimated_cost

SMALL = {"word_at": 4, "word": "ball"}
HEAVY = {"keywords": ["man", "apple", "beach", "old", "carry", "lunch", "chef", "letter"]}


def _finish_before_returning(executor: ProcessPoolExecutor) -> None:
    """Make every submit return a future that is already done: the race in which the worker answers before
    the caller registers its callback, made certain."""
    submit = executor.submit

    def submit_and_wait(*args, **kwargs) -> Future:
        future = submit(*args, **kwargs)
        future.exception()  # wait for it
        return future

    executor.submit = submit_and_wait


def _watchdog(done: threading.Event, what: str) -> None:
    """Fail with every thread's stack instead of hanging the suite (a deadlock never ends by itself)."""
    if not done.wait(120):
        import faulthandler

        faulthandler.dump_traceback(all_threads=True)
        os._exit(3)  # a deadlocked process cannot be unwound; the stack dump above says where


def _in_thread(call, what: str):
    """call() in a thread watched for a deadlock; its result or exception."""
    done, box = threading.Event(), {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed back to the test
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=_watchdog, args=(done, what), daemon=True).start()
    threading.Thread(target=run, daemon=True).start()
    done.wait()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture
def pool(tokenizer):
    COMPILED.clear()
    pool = CompilePool(tokenizer, workers=1, max_backlog=4, cache_bytes=8 * 2**20)
    pool.warm_up()
    yield pool
    pool.shutdown()
    COMPILED.clear()


def test_a_worker_that_answered_before_its_callback_was_registered_does_not_deadlock(pool, tokenizer):
    for executor in pool.executors():
        _finish_before_returning(executor)
    dfa = _in_thread(lambda: pool.compile("client", SMALL, tokenizer, 2048, 10.0), "compile")
    assert dfa.num_states > 1
    dfa = _in_thread(lambda: pool.compile("client", HEAVY | {"keywords": HEAVY["keywords"][:2]}, tokenizer,
                                          2048, 10.0), "heavy lane compile")  # fmt: skip
    assert dfa.num_states > 1


def test_refused_then_new_constraint_from_the_same_client(pool, tokenizer):
    """The issue's repro: a constraint refused as too complex, then a small new one from the same client."""
    from pc_core.errors import ConstraintTooComplex

    for executor in pool.executors():
        _finish_before_returning(executor)
    with pytest.raises(ConstraintTooComplex):
        _in_thread(lambda: pool.compile("client", HEAVY, tokenizer, 64, 10.0), "refused")
    assert _in_thread(lambda: pool.compile("client", SMALL, tokenizer, 2048, 10.0), "small").num_states > 1


def test_callbacks_of_the_returned_future_may_call_back_into_the_pool(pool, tokenizer):
    """A caller's done-callback that submits again (as a client retrying would) runs outside the pool's lock."""
    seen, called = [], threading.Event()

    def resubmit(_: Future) -> None:
        seen.append(pool.submit("a", {"keywords": ["cat"]}, tokenizer, 2048, 10.0))
        called.set()

    def start():
        first = pool.submit("a", {"keywords": ["dog"]}, tokenizer, 2048, 10.0)
        first.add_done_callback(resubmit)
        first.result()
        called.wait()  # result() may return before the thread that set it has run the callbacks
        return first

    _in_thread(start, "resubmit from a callback")
    assert _in_thread(lambda: seen[0].result(), "nested result").num_states > 1


def test_seeded_random_sequences_never_lock_the_pool(pool, tokenizer):
    """Refused, new, repeated, cancelled and past-deadline compiles from several clients, with and without
    workers that answer before the callback is registered."""
    import time

    rng = random.Random(7)
    words = ["dog", "cat", "ball", "tree", "park", "lake", "kite", "girl", "boy", "apple"]
    for executor in pool.executors()[:1]:
        _finish_before_returning(executor)

    def one_round() -> None:
        futures = []
        for _ in range(40):
            client = rng.choice(["a", "b", "c"])
            kind = rng.choice(["refused", "new", "repeat", "cancel", "deadline"])
            if kind == "refused":
                futures.append(pool.submit(client, HEAVY, tokenizer, 64, 5.0))
            elif kind == "deadline":
                futures.append(pool.submit(client, {"keywords": rng.sample(words, 2)}, tokenizer, 2048, 5.0,
                                           deadline=time.perf_counter() - 1))  # fmt: skip
            else:
                constraint = {"keywords": ["dog"]} if kind == "repeat" else {"keywords": rng.sample(words, 2)}
                try:
                    future = pool.submit(client, constraint, tokenizer, 2048, 5.0)
                except Exception:  # noqa: BLE001 - CompileBacklogFull is a fine answer under a flood
                    continue
                if kind == "cancel":
                    future.cancel()
                futures.append(future)
        for future in futures:
            if not future.cancelled():
                future.exception()

    _in_thread(one_round, "random sequence")


def test_estimated_cost_sends_heavy_constraints_to_the_heavy_lane():
    assert estimated_cost(SMALL) < estimated_cost(HEAVY)
    assert estimated_cost({"keywords": ["dog"]}) < estimated_cost(
        {"keywords": ["dog", "cat", "ball", "park"]}
    )
    assert estimated_cost({"keywords": ["dog"]}) < estimated_cost(
        {"all": [{"keywords": ["dog"]}, {"word_count": {"min": 20, "max": 30}}]}
    )


WORKER_PROBE = textwrap.dedent(
    """
    import os, sys, time
    from service.compile_pool import CompilePool
    from tests.tiny_models import build_tokenizer
    from pathlib import Path
    tok = build_tokenizer(Path(sys.argv[1]))
    pool = CompilePool(tok, workers=1, max_backlog=4, cache_bytes=2**20)
    pool.warm_up()
    print(" ".join(str(p) for p in pool.worker_pids()), flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone (reaped between the open and the read: ESRCH)
        return False


def test_workers_exit_when_their_server_is_killed(tmp_path):
    """SIGKILL (the OOM killer, an orchestrator past its grace period) gives the server no chance to stop its
    workers: they notice their parent is gone and exit, and so does multiprocessing's resource tracker."""
    import time

    proc = subprocess.Popen([sys.executable, "-c", WORKER_PROBE, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())  # fmt: skip
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids, "the probe printed no worker pids"
        children = _descendants_of(proc.pid)  # the fork server, its workers, the resource tracker
        assert set(pids) <= children
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(600):  # each worker polls its parent; no timing is asserted, only that they go
        if not any(_alive(pid) for pid in children):
            break
        time.sleep(0.1)
    survivors = [pid for pid in children if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes outlived their killed server: {survivors}"


def _descendants_of(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        found = _children_of(todo.pop())
        out |= found
        todo.extend(found)
    return out


def _children_of(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().split(") ")[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if ppid == pid:
                out.add(int(entry))
    return out


def test_shutdown_leaks_no_semaphores(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from service.compile_pool import CompilePool
        from tests.tiny_models import build_tokenizer
        tok = build_tokenizer(Path(sys.argv[1]))
        pool = CompilePool(tok, workers=1, max_backlog=4, cache_bytes=2**20)
        pool.warm_up()
        pool.compile("c", {"keywords": ["dog"]}, tok, 2048, 10.0)
        pool.shutdown()
        """
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr, done.stderr


def test_a_heavy_compile_never_delays_a_light_one(pool, tokenizer):
    """The heavy lane held forever (a compile that never ends): light constraints still compile."""
    assert pool.lane_of(HEAVY) == "heavy" and pool.lane_of(SMALL) == "light"
    pool._lanes["heavy"].submit = lambda *args: Future()  # never answers
    held = pool.submit("noisy", HEAVY, tokenizer, 100_000, 600.0)
    light = _in_thread(lambda: pool.compile("noisy", SMALL, tokenizer, 2048, 10.0), "light behind heavy")
    assert light.num_states > 1 and not held.done()


def test_a_misjudged_constraint_moves_on_to_the_heavy_lane(pool, tokenizer, monkeypatch):
    """A constraint estimated light that overruns the light lane's budget is finished by the heavy lane with
    its full budget, not rejected."""
    import service.compile_pool as compile_pool

    monkeypatch.setattr(compile_pool, "LIGHT_BUDGET_S", 1e-6)
    started = []
    heavy_submit = pool._lanes["heavy"].submit
    pool._lanes["heavy"].submit = lambda *args: started.append(args) or heavy_submit(*args)
    dfa = _in_thread(lambda: pool.compile("c", {"keywords": ["dog", "ball"]}, tokenizer, 2048, 30.0), "moved")
    assert dfa.num_states > 1
    assert started and started[0][2] == 30.0  # the heavy lane got the full budget
