"""Stage 3: EM fine-tuning (docs/method.md §8.4), resumable, data-parallel: the training run.

The maths lives beside it: the E-step (forward-backward) in distill/forward_backward.py, the counts and the
M-step in distill/counts.py; the output directory (checkpoints, logs, curve) in distill/train_dir.py. Here:
the schedule, the held-out evaluation, and resuming.

Schedule: `chunk_size` sequences per step (0 = all of them: full-batch EM). Each pass over the data uses a
permutation drawn from (seed, pass index), so the sequence of chunks, and hence the whole run, is a pure
function of the seed: resuming from a checkpoint gives the same final model as an uninterrupted run. Counts
are summed over ranks once per step.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from distill import data, dist
from distill.counts import Counts, m_step
from distill.errors import DistillError
from distill.forward_backward import Prepared, e_step, log_likelihood
from distill.train_dir import latest_checkpoint, remove_partial_checkpoints, write_checkpoint, write_logs
from pc_core.atomic_files import remove_stale_temporaries
from pc_core.hmm import HMM

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    init: str
    data: str
    out: str
    steps: int = 30
    chunk_size: int = 0  # sequences per EM step; 0 = every training sequence (full-batch EM)
    batch_size: int = 256  # sequences per forward-backward call
    step_size: float = 1.0  # 1: replace the parameters; < 1: step-size EM
    pseudocount: float = 1e-3
    heldout: int = 1024  # sequences at the end of --data kept for evaluation (at most 10% of it)
    heldout_data: str | None = None  # or a separate sample directory
    seed: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    plot: bool = True

    def validate(self) -> None:
        if self.steps < 0 or self.chunk_size < 0 or self.batch_size < 1 or self.heldout < 0:
            raise DistillError("steps, chunk_size and heldout must be >= 0 and batch_size >= 1")
        if not 0 < self.step_size <= 1:
            raise DistillError(f"step_size must be in (0, 1], got {self.step_size}")
        if self.pseudocount <= 0:
            raise DistillError(
                f"pseudocount must be > 0 (zero probabilities break the guide), got {self.pseudocount}"
            )
        if self.keep_checkpoints < 1:
            raise DistillError("keep_checkpoints must be >= 1")


def _data_digest(manifest: dict) -> str:
    h = hashlib.sha256()
    for entry in sorted(manifest["shards"], key=lambda e: e["index"]):
        h.update(entry["sha256"].encode())
    return h.hexdigest()[:32]


def _to_device(tokens: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(tokens.astype(np.int64)).to(device)


def _heldout_ll(p: Prepared, tokens: np.ndarray, ctx: dist.Context, batch: int) -> float:
    """Held-out log-likelihood per token, the sequences split over ranks."""
    mine = tokens[ctx.rank :: ctx.world_size]
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for start in range(0, len(mine), batch):
        total[0] += log_likelihood(p, _to_device(mine[start : start + batch], ctx.device)).double().sum()
    total[1] = mine.size
    dist.all_reduce_sum(ctx, total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


@dataclass
class _Run:
    """A training run: its settings, data and where it stands (the model, the history, the step)."""

    cfg: TrainConfig
    ctx: dist.Context
    out: Path
    init: HMM
    train: np.ndarray  # (N, T) training sequences
    heldout: np.ndarray  # (M, T) evaluation sequences
    identity: dict  # the settings a checkpoint must share to be resumed
    hmm: HMM
    pairing: dict = field(default_factory=dict)  # lm, tokenizer_fingerprint of the data's manifest
    history: list[dict] = field(default_factory=list)
    step: int = 0
    epoch: int = 0  # the pass over the data the last step belonged to

    @property
    def chunk(self) -> int:
        return self.cfg.chunk_size or len(self.train)


def run_train(cfg: TrainConfig) -> HMM:
    """EM from cfg.init on cfg.data, resuming from the latest checkpoint in cfg.out; returns the final HMM."""
    from tqdm import tqdm

    cfg.validate()
    ctx = dist.init(cfg.device)
    run = _setup(cfg, ctx)
    p = _resume(run)
    bar = tqdm(
        total=cfg.steps,
        initial=min(run.step, cfg.steps),
        unit="step",
        desc="EM",
        disable=not ctx.is_main or None,
    )
    while run.step < cfg.steps:
        p = _em_step(run, p)
        if ctx.is_main:
            _save_step(run)
        bar.update(1)
        dist.barrier(ctx)  # no rank runs ahead of the checkpoint
    bar.close()
    _finish(run)
    return run.hmm


def _setup(cfg: TrainConfig, ctx: dist.Context) -> _Run:
    """Load the initial HMM and the data, split off the held-out part, and name the run's identity."""
    init = HMM.load(cfg.init)
    tokens, manifest = data.load_tokens(Path(cfg.data))
    data.check_vocab(manifest, init.vocab_size, f"the initial HMM {cfg.init}", cfg.data)
    pairing = {k: manifest.get(k) for k in ("lm", "tokenizer_fingerprint") if manifest.get(k)}
    recorded = init.metadata.get("tokenizer_fingerprint")
    if recorded and pairing.get("tokenizer_fingerprint") not in (None, recorded):
        raise DistillError(
            f"tokenizer mismatch: {cfg.data} was sampled with tokenizer {pairing['tokenizer_fingerprint']} "
            f"({manifest.get('lm')}), the initial HMM {cfg.init} was made for tokenizer {recorded}"
        )
    if init.eos_token_id is not None and manifest["eos_token_id"] not in (None, init.eos_token_id):
        raise DistillError(
            f"EOS mismatch: {cfg.data} uses EOS {manifest['eos_token_id']}, the HMM {init.eos_token_id}"
        )
    if cfg.heldout_data:
        heldout, held_manifest = data.load_tokens(Path(cfg.heldout_data))
        data.check_vocab(held_manifest, init.vocab_size, f"the initial HMM {cfg.init}", cfg.heldout_data)
        train = tokens
    else:
        n_held = min(cfg.heldout, len(tokens) // 10)
        train, heldout = tokens[: len(tokens) - n_held], tokens[len(tokens) - n_held :]
    if len(train) == 0:
        raise DistillError(f"{cfg.data}: no training sequences")
    identity = {
        "init": init.fingerprint,
        "data": _data_digest(manifest),
        "heldout": _data_digest(held_manifest) if cfg.heldout_data else len(heldout),
        "chunk_size": cfg.chunk_size or len(train),
        "step_size": cfg.step_size,
        "pseudocount": cfg.pseudocount,
        "seed": cfg.seed,
    }
    return _Run(cfg, ctx, Path(cfg.out), init, train, heldout, identity, hmm=init, pairing=pairing)


def _resume(run: _Run) -> Prepared:
    """Clean the output directory of a kill's leftovers, continue from the latest checkpoint (refusing one
    of other settings), and log step 0 on a fresh run. Returns the current model, prepared."""
    out, ctx = run.out, run.ctx
    if ctx.is_main:  # before any rank looks: nobody is writing yet
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        remove_partial_checkpoints(out)
    dist.barrier(ctx)
    resumed = latest_checkpoint(out)
    if resumed is not None:
        run.hmm, state = resumed
        if state["identity"] != run.identity:
            diffs = [k for k in run.identity if state["identity"].get(k) != run.identity[k]]
            raise DistillError(
                f"{out} holds a run with other settings ({', '.join(diffs)} differ); use a new --out"
            )
        run.step, run.history = state["step"], state["history"]
        log.info("resuming %s from step %d", out, run.step)
        if ctx.is_main:
            write_logs(out, run.history, run.cfg.plot)
    p = Prepared(run.hmm, ctx.device)
    if not run.history:  # step 0: where the initial model stands
        held = _heldout_ll(p, run.heldout, ctx, run.cfg.batch_size)
        run.history.append(_history_row(0, float("nan"), held, 0, float("nan"), 0.0))
    return p


def _history_row(
    step: int, train_ll: float, heldout_ll: float, tokens: int, tokens_per_s: float, seconds: float
) -> dict:
    return {
        "step": step,
        "train_ll_per_token": train_ll,
        "heldout_ll_per_token": heldout_ll,
        "tokens": tokens,
        "tokens_per_s": tokens_per_s,
        "seconds": seconds,
    }


def _chunk_rows(run: _Run) -> np.ndarray:
    """This rank's sequence indices for the next step; sets run.epoch. Each pass over the data uses the
    permutation drawn from (seed, pass), so the chunks are a pure function of the seed and the step."""
    n, chunk = len(run.train), run.chunk
    run.epoch, j = divmod(run.step, math.ceil(n / chunk))
    if chunk < n:
        gen = torch.Generator().manual_seed(run.cfg.seed * 1_000_003 + run.epoch)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    return order[j * chunk : (j + 1) * chunk][run.ctx.rank :: run.ctx.world_size].numpy()


def _em_step(run: _Run, p: Prepared) -> Prepared:
    """One EM step on the next chunk (counts summed over ranks), then the held-out evaluation; appends the
    step to the history and returns the new model, prepared."""
    cfg, ctx = run.cfg, run.ctx
    began = time.perf_counter()
    mine = _chunk_rows(run)
    counts = Counts(run.hmm.hidden_size, run.hmm.vocab_size, ctx.device)
    stats = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # (log-likelihood, tokens)
    for start in range(0, len(mine), cfg.batch_size):
        x = _to_device(run.train[np.sort(mine[start : start + cfg.batch_size])], ctx.device)
        stats[0] += e_step(p, x, counts).double().sum()
        stats[1] += x.numel()
    dist.all_reduce_sum(ctx, *counts.tensors(), stats)
    run.hmm = m_step(run.hmm, counts, cfg.pseudocount, cfg.step_size)
    p = Prepared(run.hmm, ctx.device)
    run.step += 1
    em_seconds = time.perf_counter() - began
    held = _heldout_ll(p, run.heldout, ctx, cfg.batch_size)
    train_ll, tokens = float(stats[0] / stats[1]), int(stats[1])
    seconds = time.perf_counter() - began
    run.history.append(_history_row(run.step, train_ll, held, tokens, float(stats[1]) / em_seconds, seconds))
    return p


def _save_step(run: _Run) -> None:
    """Rank 0: the checkpoint of the step just done, the logs, and the progress line."""
    state = {
        "step": run.step,
        "identity": run.identity,
        "rng": {"seed": run.cfg.seed, "pass": run.epoch},
        "history": run.history,
    }
    path = write_checkpoint(run.out, run.step, run.hmm, state, run.cfg.keep_checkpoints)
    write_logs(run.out, run.history, run.cfg.plot)
    row = run.history[-1]
    log.info(
        "step %d/%d: train ll/token %.5f (before the step), held-out ll/token %.5f, %.0f tokens/s, "
        "checkpoint %s",
        run.step,
        run.cfg.steps,
        row["train_ll_per_token"],
        row["heldout_ll_per_token"],
        row["tokens_per_s"],
        path,
    )


def _finish(run: _Run) -> None:
    """Rank 0 saves the final model with its provenance in the metadata; every rank waits for it."""
    if run.ctx.is_main:
        held = run.history[-1]["heldout_ll_per_token"]
        run.hmm.metadata = {
            **run.init.metadata,
            "source": "em",
            "init": str(run.cfg.init),
            "data": str(run.cfg.data),
            "em": {**asdict(run.cfg), "steps_done": run.step},
            "heldout_ll_per_token": held,
            **run.pairing,  # the LM and tokenizer the data were sampled from: HMM.save writes them to config.json
        }
        run.hmm.save(run.out)
        log.info("finished: %d EM steps, held-out ll/token %.5f -> %s", run.step, held, run.out)
    dist.barrier(run.ctx)
