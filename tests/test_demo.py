"""`pcgen demo --quick`: the offline end-to-end demo (tiny LM trained here -> distilled HMM -> server)."""

import os
import subprocess
import sys


def test_demo_runs_offline_end_to_end(demo_models):
    """The fixture built the quick demo with pc_core.demo.build (the same code `pcgen demo` runs first); the
    command then finds it, starts the server, asks and prints."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pc_core.cli", "demo", "--quick", "--cache", str(demo_models["cache"]),
           "--keywords", "girl", "kite"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
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
