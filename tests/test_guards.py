"""The run's own guards (tests/guards.py), on a small test file run by a pytest of its own: a process a test
leaves behind fails the run and is named and killed, and a hung test fails with every thread's stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from guards import (pytest_configure, pytest_sessionfinish, pytest_terminal_summary, pytest_testnodedown,
                    pytest_timeout_set_timer)
"""

LEAKY = """
import subprocess, sys, threading

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def test_leaves_a_child():
    subprocess.Popen(SLEEPER)


def test_leaves_an_orphan():  # its parent exits at once: the sleeper is reparented (to PID 1 or a subreaper)
    code = f"import subprocess; subprocess.Popen({SLEEPER!r})"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cleans_up():
    child = subprocess.Popen(SLEEPER)
    child.kill()
    child.wait()


def waiting_in_a_helper_thread(event):
    event.wait()


def test_hangs():
    event = threading.Event()
    threading.Thread(target=waiting_in_a_helper_thread, args=(event,), daemon=True).start()
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never returns
"""


def run_pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PCGEN_TEST_EXIT_GRACE_S": "2"}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "pytest_timeout", "--timeout=3", "-p", "no:cacheprovider",
           "-q", "--rootdir", str(tmp_path), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("workers", [[], ["-p", "xdist", "-n", "2"]], ids=["one-process", "xdist"])
def test_survivors_fail_the_run_and_hangs_dump_every_thread(tmp_path, workers):
    run = run_pytest(tmp_path, *workers)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "3 failed" not in out and re.search(r"1 failed, 3 passed", out), out
    report = out.split("processes that outlived the tests", 1)[1]
    assert "started during: test_leaky.py::test_leaves_a_child (call)" in report, out
    assert "started during: test_leaky.py::test_leaves_an_orphan (call)" in report, out
    assert "test_cleans_up" not in report
    pids = [int(pid) for pid in re.findall(r"^pid (\d+): ", report, re.M)]
    assert len(pids) == 2
    for pid in pids:  # killed by the check (a zombie until its new parent reaps it)
        try:  # a zombie, or gone (reaped, even between the open and the read: ESRCH)
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        assert state in ("Z", "X", "gone"), (pid, state)
    # the hung test: failed with the stacks of all threads, the helper thread's included
    assert "test_hangs ran past 3 s. Stacks of all threads" in out, out
    assert "in waiting_in_a_helper_thread" in out


def test_a_clean_run_passes(tmp_path):
    run = run_pytest(tmp_path, "-k", "cleans_up")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "outlived" not in run.stdout
