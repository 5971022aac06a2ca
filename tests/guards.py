"""Two guards for the whole test run (hooks imported by tests/conftest.py).

1. A watchdog: a test that runs past its timeout (pytest-timeout's `--timeout` / `@pytest.mark.timeout`) fails
   with a faulthandler dump of every thread's stack in its report, instead of hanging the run. SIGALRM makes the
   main thread fail the test; should the main thread be stuck where no signal handler runs (inside C code), a
   faulthandler timer dumps all stacks to stderr HARD_GRACE_S later and ends the process (under xdist the
   controller reports the crashed test and carries on with a new worker).

2. No process outlives the run: every process the tests start inherits RUN_MARK (the environment variable set
   here, unique per run), so the check at the end of the session finds the survivors by reading
   /proc/PID/environ, even those whose parent died and that were reparented to PID 1, without mistaking
   another run's processes for ours. The run fails and lists each survivor with the test that started it
   (its PYTEST_CURRENT_TEST); they are then killed. Linux only (/proc); elsewhere the check is skipped.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

RUN_MARK = "PCGEN_TEST_RUN"
HARD_GRACE_S = 60.0  # after the soft timeout, before the hard exit
EXIT_GRACE_S = float(os.environ.get("PCGEN_TEST_EXIT_GRACE_S", "10"))  # for survivors to see their parent die
PROC = Path("/proc")

_STDERR_FD: int | None = None  # a copy of the real stderr (pytest's capture replaces fd 2 during a test)
_LEAKED = pytest.StashKey[list]()


def _own_mark() -> None:
    """A new mark for this run; an xdist worker keeps its controller's (its parent's). A pytest started by a
    test (a child of a worker or of a run without workers) gets its own."""
    inherited = os.environ.get(RUN_MARK, "")
    if not ("PYTEST_XDIST_WORKER" in os.environ and inherited.split("-")[0] == str(os.getppid())):
        os.environ[RUN_MARK] = f"{os.getpid()}-{time.time_ns()}"


_own_mark()


def pytest_configure(config: pytest.Config) -> None:
    global _STDERR_FD
    if _STDERR_FD is None:
        _STDERR_FD = os.dup(2)


# ----------------------------------------------------------------------------------------------- watchdog


def all_thread_stacks() -> str:
    """faulthandler's dump of every thread's Python stack (works whatever the other threads are doing)."""
    with tempfile.TemporaryFile("w+") as fh:
        faulthandler.dump_traceback(file=fh, all_threads=True)
        fh.flush()
        fh.seek(0)
        return fh.read()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: object) -> bool | None:
    """Replaces pytest-timeout's signal method (its stack dump goes to a terminal that xdist workers lack)."""
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own thread method
    timeout = settings.timeout

    def on_timeout(signum: int, frame: object) -> None:
        __tracebackhide__ = True
        stacks = all_thread_stacks()
        pytest.fail(f"Timeout: {item.nodeid} ran past {timeout:g} s. Stacks of all threads:\n{stacks}")

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        faulthandler.cancel_dump_traceback_later()

    item.cancel_timeout = cancel
    signal.signal(signal.SIGALRM, on_timeout)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    faulthandler.dump_traceback_later(timeout + HARD_GRACE_S, exit=True, file=_STDERR_FD)
    return True


# ------------------------------------------------------------------------------------------ process check


def _read(pid: int, name: str) -> bytes:
    try:
        return (PROC / str(pid) / name).read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _environ(pid: int) -> dict[str, str]:
    pairs = (entry.split(b"=", 1) for entry in _read(pid, "environ").split(b"\0") if b"=" in entry)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _alive(pid: int) -> bool:
    stat = _read(pid, "stat")
    return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie has already exited


def marked_processes() -> list[int]:
    """Live processes started (directly or not) by this run, except this process."""
    mark = f"{RUN_MARK}={os.environ[RUN_MARK]}".encode()
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if mark in _read(int(entry.name), "environ").split(b"\0") and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def describe(pid: int) -> str:
    command = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace").strip()[:300]
    started_by = _environ(pid).get("PYTEST_CURRENT_TEST", "outside a test")
    return f"pid {pid}: {command}\n    started during: {started_by}"


def live_descendants() -> set[int]:
    """This process's children, theirs, and so on (marked or not), except zombies and this process's own
    multiprocessing resource tracker (it exits with this process; the controller's check sees that it did)."""
    import multiprocessing.resource_tracker as tracker

    own = getattr(tracker._resource_tracker, "_pid", None)
    return {pid for pid in _descendants(os.getpid()) if _alive(pid) and pid != own}


def survivors(find: Callable[[], set[int]], grace_s: float = EXIT_GRACE_S) -> list[str]:
    """The processes `find` returns that are still alive after `grace_s`, described, then killed."""
    deadline = time.monotonic() + grace_s
    while (pids := sorted(find())) and time.monotonic() < deadline:
        time.sleep(0.2)
    described = [describe(pid) for pid in pids]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return described


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every fixture is torn down (and, under xdist, every worker has stopped): fail the run if a process
    it started is still alive. A worker only reports its own; the controller finds orphans too."""
    config = session.config
    if not PROC.exists() or os.environ.get("PCGEN_TEST_ALLOW_SURVIVORS"):
        return
    _stop_own_resource_tracker()
    leaked = config.stash.get(_LEAKED, [])
    if _is_xdist_worker(config):
        # other workers' processes carry the mark too: only this worker's own leaks are reported from here
        leaked += survivors(live_descendants)
        config.workeroutput["leaked_processes"] = leaked
        return
    leaked += survivors(lambda: set(marked_processes()) | live_descendants())
    config.stash[_LEAKED] = leaked
    if leaked and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _stop_own_resource_tracker() -> None:
    """A test that starts worker processes in this process (a CompilePool) also starts multiprocessing's fork
    server and resource tracker, which live as long as this process: stop them here (the fork server first: it
    holds the tracker's pipe), so that the check counts only real leaks."""
    from multiprocessing import forkserver, resource_tracker

    forkserver._forkserver._stop()  # noqa: SLF001 - no public way to end them early
    resource_tracker._resource_tracker._stop()  # noqa: SLF001


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = _read(int(entry.name), "stat")
            if stat:
                children.setdefault(int(stat.rsplit(b")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: collect what a worker found."""
    config = node.config
    config.stash[_LEAKED] = config.stash.get(_LEAKED, []) + node.workeroutput.get("leaked_processes", [])


def pytest_terminal_summary(terminalreporter: object, exitstatus: int, config: pytest.Config) -> None:
    leaked = config.stash.get(_LEAKED, [])
    if leaked:
        terminalreporter.section(
            "processes that outlived the tests (the run fails; they were killed)", red=True
        )
        for line in dict.fromkeys(leaked):
            terminalreporter.write_line(line)
