"""Processes that end with the process that started them.

A server killed with SIGKILL (the OOM killer, an orchestrator after its grace period) runs no cleanup, so
its children must notice by themselves. A Python child calls `exit_with_parent`: a daemon thread watches its
parent and exits when it is gone. (Linux's parent-death signal is not used there: the kernel ties it to the
*thread* that started the child, and pools start workers from whichever thread submits first.) A child that
is not Python gets `set_parent_death_signal` as its `preexec_fn`, from a starter that lives as long as it.
A worker forked by a multiprocessing fork server is the fork server's child, and the fork server lives as long
as its workers: such a worker calls `exit_with(server_pid)`, which watches the server itself.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def exit_with_parent(parent: int | None = None) -> None:
    """End this process when `parent` (default: the current parent) is gone."""
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:  # already reparented: the parent died before we got here
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="pcgen-parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    # getppid changes when the parent dies and this process is reparented (to init or a subreaper)
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os._exit(1)


def exit_with(pid: int) -> None:
    """End this process when process `pid` (not necessarily the parent) is gone."""
    try:
        handle = os.pidfd_open(pid)  # readable once the process has ended; immune to pid reuse from here on
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (not Linux, or a kernel before 5.3): poll the pid instead
        threading.Thread(target=_poll_pid, args=(pid,), name="pcgen-process-watch", daemon=True).start()
        return
    threading.Thread(target=_wait_handle, args=(handle,), name="pcgen-process-watch", daemon=True).start()


def _wait_handle(handle: int) -> None:
    select.select([handle], [], [])
    os._exit(1)


def _poll_pid(pid: int) -> None:
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, owned by someone else
            pass
        time.sleep(POLL_S)


def set_parent_death_signal() -> None:
    """In a child just started (e.g. `preexec_fn` of subprocess.Popen): SIGKILL when the parent dies. Linux only;
    elsewhere nothing (children that run Python call `exit_with_parent` instead)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
