"""Test servers forked from a warm template process instead of started cold.

Every `pcgen serve` a test starts would import torch, transformers and the service (about 3 CPU s of its 4-5
before loading the tiny models), and the suite starts dozens. A template process per pytest process does those
imports once; each server is then `os.fork()` of the template running `pcgen.cli serve` as `python -m` would,
with its own environment, working directory and log. What the server runs after the fork is the product's
own code path; only the imports are shared.

Where forking would not give the same process as a cold start, a server starts cold (`wants_cold_start`):
variables read when a module is imported (PCGEN_TEST_* hooks, the Hugging Face and tokenizers settings)
differ from the template's. The template dies with its pytest process (parent-death signal) and every
server with the template (the same signal, set in the forked child).

Protocol: one JSON object per line on the template's stdin, one reply per line on its stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# read when a module is imported: a server whose environment changes one of these must start cold
IMPORT_TIME_PREFIXES = ("PCGEN_TEST_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OMP_", "MKL_", "TORCH", "PYTHON")  # fmt: skip

TEMPLATE_MAIN = r"""
import ctypes, json, os, runpy, signal, sys, traceback
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the template ends with its pytest process
# what `pcgen serve` imports on its way to ready (the cost a cold start pays)
import torch, transformers, uvicorn  # noqa
import transformers.models.gpt2.modeling_gpt2, transformers.models.llama.modeling_llama  # noqa
import pcgen.cli, service.cli, service.app, service.runtime, service.engine, pc_core.lm, pc_core.hmm  # noqa
import pc_core.constraints.compiler, service.compile_pool  # noqa
statuses = {}

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        statuses[pid] = os.waitstatus_to_exitcode(status)

def serve(request):
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # the server ends with the template
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["module"], *request["args"]]
        sys.modules.pop(request["module"], None)  # run as __main__ only, as `python -m` does
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    reap()
    if request["op"] == "serve":
        reply = {"pid": serve(request)}
    else:  # poll
        reply = {"returncode": statuses.get(request["pid"])}
    print(json.dumps(reply), flush=True)
"""


class ForkedProcess:
    """The part of subprocess.Popen the tests use, for a server forked by the template (not our child: its
    exit status comes from the template, which reaps it)."""

    def __init__(self, template: Template, pid: int) -> None:
        self.template, self.pid, self.returncode = template, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.template.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Template:
    """One warm process per pytest process (started on first use, stopped by `close_template`)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TEMPLATE_MAIN], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError(f"the server template exited with {self.proc.wait()}")

    def _ask(self, request: dict) -> dict:
        with self._lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the server template is gone")
        return json.loads(reply)

    def wants_cold_start(self, env: dict[str, str]) -> bool:
        changed = {k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k)}
        return any(k.startswith(IMPORT_TIME_PREFIXES) for k in changed)

    def serve(
        self, args: list[str], env: dict[str, str], log_path: Path, module: str = "pcgen.cli"
    ) -> ForkedProcess:
        """`python -m module *args` as a fork of the template, its output appended to `log_path`."""
        reply = self._ask({"op": "serve", "module": module, "args": args, "env": env, "cwd": str(ROOT),
                           "log": str(log_path)})  # fmt: skip
        return ForkedProcess(self, reply["pid"])

    def returncode(self, pid: int) -> int | None:
        return self._ask({"op": "poll", "pid": pid})["returncode"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the template's loop ends; its servers get the parent-death signal
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


_TEMPLATE: Template | None = None
_TEMPLATE_LOCK = threading.Lock()


def template(env: dict[str, str]) -> Template | None:
    """The warm template for servers of this environment's import-time settings (None: PCGEN_TEST_COLD_START
    is set, every server starts cold)."""
    global _TEMPLATE
    if os.environ.get("PCGEN_TEST_COLD_START"):
        return None
    with _TEMPLATE_LOCK:
        if _TEMPLATE is None or _TEMPLATE.proc.poll() is not None:
            _TEMPLATE = Template(env)
        return _TEMPLATE


def close_template() -> None:
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is not None:
            _TEMPLATE.close()
            _TEMPLATE = None
