"""Helpers for the distillation tests: synthetic data directories and `pcgen distill` subprocesses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env() -> dict:
    # the repository root first on the path, so the subprocess imports this checkout's packages
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"
    )
    return env


def pcgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "pcgen.cli", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        pcgen(*args), cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def cli_in_process(caplog, capsys, *args: str) -> tuple[int, str]:
    """`pcgen ARGS` in this process: its exit status and what it logged and printed to stderr. For the runs
    after a kill (resume, rerun, refusal): the command's own code, without a new interpreter importing torch
    and transformers (seconds of CPU each); only the run that is killed needs a process of its own."""
    from pcgen.cli import main

    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        code = main(list(args))
    return code, caplog.text + capsys.readouterr().err


def kill_when(cmd: list[str], ready, timeout: float = 120) -> str:
    """Start cmd, SIGKILL it as soon as ready() holds (polled every 5 ms); returns its stderr so far.
    Fails if the process ended before it could be killed (the test would prove nothing)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended before the kill point: {proc.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.005)
        assert proc.poll() is None, "finished before it could be killed"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    return proc.stderr.read().decode()


def hmm_data(
    directory: Path, hmm, num_sequences: int, seq_len: int, seed: int, shard_size: int = 512
) -> Path:
    """A data directory of sequences drawn from `hmm` (tokens only)."""
    from synthetic import sample_hmm, write_dataset

    tokens, _ = sample_hmm(hmm, num_sequences, seq_len, seed=seed)
    write_dataset(directory, tokens, hmm.vocab_size, hmm.eos_token_id, shard_size=shard_size)
    return Path(directory)


def per_token_ll(hmm, directory: Path) -> float:
    """Held-out log-likelihood per token of every sequence in a data directory."""
    import torch

    from distill import data
    from distill.forward_backward import Prepared, log_likelihood

    tokens, _ = data.load_tokens(directory)
    x = torch.from_numpy(tokens.astype("int64"))
    return float(log_likelihood(Prepared(hmm, "cpu"), x).sum()) / x.numel()
