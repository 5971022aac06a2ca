"""`pcgen demo --quick`: the offline end-to-end demo (tiny LM trained here -> distilled HMM -> server)."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def demo_cmd(demo_models, *args):
    """`pcgen demo` on the models the fixture built with pcgen.demo.build (the same code `pcgen demo` runs
    first), so the command finds them and goes straight to serving."""
    return [sys.executable, "-m", "pcgen", "demo", "--quick", "--cache", str(demo_models["cache"]), *args]


def test_demo_runs_offline_end_to_end(demo_models):
    run = subprocess.run(demo_cmd(demo_models, "--keywords", "girl", "kite"), capture_output=True, text=True,
                         env=ENV, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    outputs = [line for line in run.stdout.splitlines() if line.strip().startswith("[")]
    assert len(outputs) == 3
    for line in outputs:
        assert line.strip().startswith("[satisfied]"), line
        text = line.lower()
        assert "girl" in text and "kite" in text, line
    assert (
        "parameters" not in run.stderr and "stage" not in run.stderr
    )  # reused: no training, no distillation


def test_demo_prints_an_error_answer_on_one_line(demo_models):
    """A 4xx from the server (here a 422: a keyword with a zero-width joiner) is the server's message on one
    line and a non-zero exit, not a traceback."""
    run = subprocess.run(demo_cmd(demo_models, "--keywords", "dog\u200d"), capture_output=True, text=True,
                         env=ENV, timeout=900)  # fmt: skip
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-4000:]
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
    (line,) = [line for line in run.stderr.splitlines() if line.startswith("pcgen demo: HTTP 422 ")]
    assert "keywords[0]" in line and "U+200D (ZERO WIDTH JOINER)" in line, line


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_keep_serving_stops_its_server_on_a_signal(demo_models, tmp_path, sig):
    port = _free_port()
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    cmd = demo_cmd(demo_models, "--keywords", "girl", "kite", "--keep-serving", "--port", str(port))
    with open(stdout, "w") as out, open(stderr, "w") as err:
        demo = subprocess.Popen(cmd, stdout=out, stderr=err, env=ENV)
    server_pid = None
    try:
        deadline = time.time() + 600
        while "Serving on" not in stdout.read_text():
            assert demo.poll() is None and time.time() < deadline, stdout.read_text() + stderr.read_text()
            time.sleep(0.5)
        server_pid = int(re.search(r"starting pcgen serve \(pid (\d+)\)", stderr.read_text()).group(1))
        assert _alive(server_pid)
        assert httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=10).status_code == 200

        demo.send_signal(sig)
        assert demo.wait(timeout=120) == 0, stderr.read_text()[-4000:]
        assert not _alive(server_pid), "the server outlived `pcgen demo`"  # stopped and reaped by the demo
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=10)
        assert "Traceback" not in stderr.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if server_pid is not None and _alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)
