"""The warm template test servers are forked from (tests/server_template.py): a fork runs the module as
`python -m` would, reports its exit status, and dies with the template."""

from __future__ import annotations

import subprocess
import sys
import time

from server_processes import ROOT, base_env
from server_template import Template


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone (reaped between the open and the read: ESRCH)
        return False


def test_a_fork_runs_the_module_as_python_dash_m_would(tmp_path):
    template = Template(base_env())
    try:
        log = tmp_path / "version.log"
        forked = template.serve(["--version"], base_env(), log)
        assert forked.wait(120) == 0
        cold = subprocess.run([sys.executable, "-m", "pcgen.cli", "--version"], cwd=ROOT, env=base_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert log.read_text() == cold.stdout and cold.stdout.strip()

        failing = template.serve(["no-such-command"], base_env(), tmp_path / "bad.log")
        assert failing.wait(120) == cold_exit_code(["no-such-command"]) != 0
    finally:
        template.close()


def cold_exit_code(args: list[str]) -> int:
    return subprocess.run([sys.executable, "-m", "pcgen.cli", *args], cwd=ROOT, env=base_env(),
                          capture_output=True, timeout=120).returncode  # fmt: skip


def test_a_fork_dies_with_its_template(tmp_path):
    template = Template(base_env())
    forked = template.serve(
        ["--bind", "127.0.0.1", "0"], base_env(), tmp_path / "http.log", module="http.server"
    )
    assert forked.poll() is None and _alive(forked.pid)
    with open(f"/proc/{forked.pid}/stat") as stat:
        assert int(stat.read().rsplit(")", 1)[1].split()[1]) == template.proc.pid  # forked by the template
    template.close()
    deadline = time.monotonic() + 60
    while _alive(forked.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(forked.pid)


def test_servers_whose_import_time_settings_differ_start_cold():
    template = Template.__new__(Template)  # no process needed to judge an environment
    template.env = base_env()
    assert not template.wants_cold_start({**base_env(), "PCGEN_MAX_BATCH_SIZE": "1"})
    assert template.wants_cold_start({**base_env(), "PCGEN_TEST_STALL_WORD": "zebra"})
    assert template.wants_cold_start({**base_env(), "HF_HUB_OFFLINE": "0"})
