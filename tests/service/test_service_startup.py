"""`pcgen serve` with models that cannot serve exits non-zero with one line saying why, instead of answering
503 forever (which left `pcgen demo` and orchestrators waiting)."""

from __future__ import annotations

import subprocess
import sys

from server_processes import ROOT, Server

from pc_core.hmm import HMM


def _serve(logs, env: dict[str, str]) -> subprocess.CompletedProcess:
    server = Server(logs, env, "startup")  # its environment: offline, CPU
    cmd = [sys.executable, "-m", "pcgen.cli", "serve", "--host", "127.0.0.1", "--port", str(server.port)]
    return subprocess.run(cmd, cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=240)


def test_a_missing_hmm_stops_the_server(model_env, logs, tmp_path):
    missing = tmp_path / "no-such-hmm"
    done = _serve(logs, {**model_env, "PCGEN_HMM": str(missing)})
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pcgen serve: loading failed") and str(missing) in last


def test_an_hmm_for_another_vocabulary_stops_the_server(model_env, logs, tmp_path, tokenizer):
    other = tmp_path / "other-hmm"
    HMM.random(8, len(tokenizer) + 7, seed=0).save(other)
    done = _serve(logs, {**model_env, "PCGEN_HMM": str(other)})
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pcgen serve: loading failed"), last
    assert str(len(tokenizer) + 7) in last and str(len(tokenizer)) in last, last  # both sizes named


def test_a_wrong_lm_path_stops_the_server(model_env, logs, tmp_path):
    done = _serve(logs, {**model_env, "PCGEN_LM": str(tmp_path / "nowhere")})
    assert done.returncode == 1
    assert "nowhere" in done.stderr.strip().splitlines()[-1]
