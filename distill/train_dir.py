"""The EM training directory (distill/em.py): checkpoints written atomically, the logs and the curve.

config.json, model.safetensors   the final HMM (HMM.load(out)), written when the last step is done
checkpoints/step-NNNNNN/         HMM + state.json after every step (renamed into place: atomic)
log.csv, log.json, curve.png     per-step log-likelihoods, throughput; the training curve
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
from pathlib import Path

from pc_core.atomic_files import atomic_write, atomic_write_json, fsync_directory
from pc_core.hmm import HMM

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE = "state.json"


def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def write_checkpoint(out: Path, step: int, hmm: HMM, state: dict, keep: int) -> Path:
    """checkpoints/step-NNNNNN written under a temporary name and renamed: a kill leaves the last good one."""
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hmm.save(tmp)
    atomic_write_json(tmp / STATE, state)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_directory(root)  # make the rename itself durable
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial_checkpoints(out: Path) -> None:
    """Checkpoint directories a kill left half-written (never renamed into place)."""
    if (out / CHECKPOINTS).exists():
        for tmp in (out / CHECKPOINTS).glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(out: Path) -> tuple[HMM, dict] | None:
    for path in reversed(checkpoint_dirs(out)):
        try:
            state = json.loads((path / STATE).read_text())
            return HMM.load(path), state
        except Exception as err:  # an unreadable checkpoint: fall back to the one before
            log.warning("%s: unreadable checkpoint (%s), trying an older one", path, err)
    return None


def write_logs(out: Path, history: list[dict], plot: bool) -> None:
    fields = list(history[0]) if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(out / "log.csv", buf.getvalue())
    clean = [
        {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in history
    ]
    atomic_write_json(out / "log.json", clean)  # strict JSON: null, not NaN
    if plot and history:
        _write_curve(out, history)


def _write_curve(out: Path, history: list[dict]) -> None:
    """curve.png: the log-likelihoods per token against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in history]
    for key, label in (
        ("train_ll_per_token", "train (before the step)"),
        ("heldout_ll_per_token", "held-out"),
    ):
        ax.plot(steps, [r[key] for r in history], marker=".", label=label)
    ax.set_xlabel("EM step")
    ax.set_ylabel("log-likelihood per token")
    ax.legend()
    ax.grid(alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(out / "curve.png", png.getvalue())
