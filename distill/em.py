"""Stage 3: EM fine-tuning (docs/method.md §8.4), resumable, data-parallel.

E-step, per batch of sequences x (B, T): forward-backward with max-shifts, so that nothing leaves float32's
range for any T (a 32-token text has probability ~1e-100):
    E_t     = exp(log B[:, x_t] - max_z log B[z, x_t])         emissions, shifted in log space (one pass)
    fwd_t   = normalise((fwd_{t-1} @ A) * E_t)                 P(z_t | x_<=t); log P(x) = sum of the log
                                                               normalisers and shifts (float64)
    right_t = E_{t+1} * beta_{t+1} / max,   beta_t = right_t @ A^T          beta_t in [min A, 1]
    gamma_t = normalise(fwd_t * beta_t)                        expected initial / emission counts
    sum_t xi_t = A * (L^T @ R), L, R stacking every (t, b) row of fwd_t / z_t and right_t
Every message keeps a row entry >= min A > 0, so the shifted products cannot underflow; no exp or log is
needed per position (the usual log-space step, pc_core.kernels.log_matmul_exp, costs an exp and a log
per element). Three (B, H) x (H, H) products per token: forward, backward and the transition product, the
floor that benchmarks/em.py measures. Emission counts are an index_add of gamma over the token ids.

M-step: rows of (counts + pseudocount) normalised; with step_size < 1 the new parameters are interpolated
with the old ones in probability space (step-size EM). Counts are summed over ranks once per step.

Schedule: `chunk_size` sequences per step (0 = all of them: full-batch EM). Each pass over the data uses a
permutation drawn from (seed, pass index), so the sequence of chunks, and hence the whole run, is a pure
function of the seed: resuming from a checkpoint gives the same final model as an uninterrupted run.

Output directory:
    config.json, model.safetensors   the final HMM (HMM.load(out)), written when the last step is done
    checkpoints/step-NNNNNN/         HMM + state.json after every step (renamed into place: atomic)
    log.csv, log.json, curve.png     per-step log-likelihoods, throughput; the training curve
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from distill import data, dist
from distill.errors import DistillError
from pc_core.files import atomic_write, atomic_write_json, fsync_directory, remove_stale_temporaries
from pc_core.hmm import HMM

log = logging.getLogger(__name__)

TRANSITION_FLOOR = 1e-30
CHECKPOINTS = "checkpoints"
STATE = "state.json"


def normalise(counts: torch.Tensor, pseudocount: float) -> torch.Tensor:
    """log((c + p) / row sum), float32, rows along the last dimension; every entry > 0."""
    c = counts.double() + pseudocount
    return (c.log() - c.sum(-1, keepdim=True).log()).float()


class Counts:
    """Sufficient statistics of an HMM in float64: expected counts (E-step) or observed ones (LVD)."""

    def __init__(self, hidden_size: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        h, v = hidden_size, vocab_size
        self.initial = torch.zeros(h, dtype=torch.float64, device=device)  # (H,)
        self.transition = torch.zeros((h, h), dtype=torch.float64, device=device)  # (H, H)
        self.emission = torch.zeros((v, h), dtype=torch.float64, device=device)  # (V, H): a row per token

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.initial, self.transition, self.emission

    def add_observed(self, tokens: torch.Tensor, states: torch.Tensor) -> None:
        """Hard counts from observed (x, z), both (N, T) long."""
        h = self.initial.shape[0]
        self.initial += torch.bincount(states[:, 0], minlength=h).double()
        pairs = (states[:, :-1] * h + states[:, 1:]).flatten()
        self.transition += torch.bincount(pairs, minlength=h * h).view(h, h).double()
        ones = torch.ones(tokens.numel(), dtype=torch.float64, device=tokens.device)
        self.emission.view(-1).index_add_(0, (tokens * h + states).flatten(), ones)

    def to_hmm(self, pseudocount: float, eos_token_id: int | None, metadata: dict | None = None) -> HMM:
        """The M-step: rows of (counts + pseudocount) normalised."""
        return HMM(
            normalise(self.initial, pseudocount).cpu(),
            normalise(self.transition, pseudocount).cpu(),
            normalise(self.emission.T, pseudocount).cpu(),
            eos_token_id=eos_token_id,
            metadata=metadata,
        )


# ---------------------------------------------------------------------------------------------- E-step


class Prepared:
    """The parameters in the layouts the E-step reads, on the compute device, plus reusable work buffers
    (on CPU a fresh 10-100 MB buffer per call costs more in page faults than the arithmetic on it)."""

    def __init__(self, hmm: HMM, device: torch.device | str) -> None:
        self.pi = hmm.log_initial.to(device).float().exp()  # (H,)
        # (H, H) probability space. Entries below 1e-30 (never after a pseudocount M-step) are raised to it:
        # the messages below rely on every A entry being a normal float32.
        self.A = hmm.log_transition.to(device).float().exp().clamp_min(TRANSITION_FLOOR)
        self.At = self.A.T.contiguous()  # (H, H) for the backward pass
        self.log_bt = hmm.log_emission.to(device).float().T.contiguous()  # (V, H): a row per token
        self.hidden_size = self.A.shape[0]
        self._buffers: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def buffers(self, b: int, t: int) -> dict[str, torch.Tensor]:
        if (b, t) not in self._buffers:
            if len(self._buffers) > 2:  # a few shapes at most: the full batch and a last partial one
                self._buffers.clear()
            new = lambda *shape, dtype=torch.float32: torch.empty(shape, dtype=dtype, device=self.A.device)
            h = self.hidden_size
            self._buffers[(b, t)] = {
                "emit": new(t, b, h),  # (T, B, H) exp(log B[:, x_t] - max): the max-shifted emissions
                "shift": new(t, b, 1),  # (T, B, 1) that max
                "scale": new(t, b, 1),  # (T, B, 1) forward normalisers
                "fwd": new(t, b, h),  # (T, B, H) P(z_t | x_<=t)
                "right": new(t - 1, b, h),  # (T-1, B, H)
                "back": new(t - 1, b, h),  # (T-1, B, H)
                "left": new(t - 1, b, h),  # (T-1, B, H)
                "post": new(t, b, h),  # (T, B, H) P(z_t | x)
                "post64": new(t, b, h, dtype=torch.float64),  # emission counts accumulate in float64
            }
        return self._buffers[(b, t)]


def _emissions(p: Prepared, x: torch.Tensor, ws: dict[str, torch.Tensor]) -> torch.Tensor:
    """ws["emit"] = exp(log B[:, x_t] - shift), ws["shift"] = max_z log B[z, x_t], for all (t, b) at once.
    Returns the time-major token ids (T B,)."""
    tokens = x.T.reshape(-1)  # (T B,)
    emit = ws["emit"]
    torch.index_select(p.log_bt, 0, tokens, out=emit.view(-1, p.hidden_size))
    torch.amax(emit, dim=-1, keepdim=True, out=ws["shift"])
    emit.sub_(ws["shift"]).exp_()  # (T, B, H) in (0, 1], a 1 in every row
    return tokens


def _forward(p: Prepared, ws: dict[str, torch.Tensor], t_len: int) -> torch.Tensor:
    """Normalised forward pass; returns log P(x) (B,) float64 and fills ws["fwd"].

    fwd[t] = P(z_t | x_1..x_t) (rows sum to 1), so (fwd[t-1] @ A)[z] >= min A: multiplied by the shifted
    emission (a 1 in every row) the row sum stays >= min A, far inside float32's range, for any T.
    log P(x) = sum_t (log normaliser_t + shift_t), summed in float64.
    """
    emit, fwd, scale = ws["emit"], ws["fwd"], ws["scale"]
    for t in range(t_len):
        e = p.pi * emit[0] if t == 0 else torch.mul(fwd[t - 1] @ p.A, emit[t], out=fwd[t])  # (B, H)
        torch.sum(e, dim=1, keepdim=True, out=scale[t])  # (B, 1) P(x_t | x_<t) / exp(shift_t)
        torch.div(e, scale[t], out=fwd[t])
    return (scale[:t_len].log().double() + ws["shift"][:t_len].double()).sum(0).squeeze(1)


def log_likelihood(p: Prepared, x: torch.Tensor) -> torch.Tensor:
    """log P(x) per sequence (B,) float64 by the forward pass alone; x (B, T) long on the device."""
    ws = p.buffers(x.shape[0], x.shape[1])
    _emissions(p, x, ws)
    return _forward(p, ws, x.shape[1])


def e_step(p: Prepared, x: torch.Tensor, counts: Counts) -> torch.Tensor:
    """Add the expected counts of x (B, T) to `counts`; returns log P(x) per sequence (B,) float64.

    Log space where the range demands it, with max-shifts: each emission column log B[:, x_t] is shifted
    by its max before exp, and the messages are kept normalised per row (their log-normalisers make up
    log P(x)), so no value ever leaves float32's range, however long the sequence. Backward:
        right_t = E_{t+1} * beta_{t+1} / max          beta_t = right_t @ A^T  in [min A, 1]
    with E the shifted emissions. Per position: three (B, H) x (H, H) products (forward, backward, and the
    transition counts, done as one big product at the end) and a few elementwise passes, no exp or log.
    """
    t_len, h = x.shape[1], p.hidden_size
    ws = p.buffers(x.shape[0], t_len)
    tokens = _emissions(p, x, ws)
    ll = _forward(p, ws, t_len)
    emit, fwd, right, back, post = ws["emit"], ws["fwd"], ws["right"], ws["back"], ws["post"]
    for t in range(t_len - 2, -1, -1):
        r = emit[t + 1] if t == t_len - 2 else torch.mul(emit[t + 1], back[t + 1], out=right[t])  # beta_T = 1
        torch.div(r, r.amax(dim=1, keepdim=True), out=right[t])  # right_t, max 1
        torch.mm(right[t], p.At, out=back[t])  # beta_t up to a row constant
    post[-1] = fwd[-1]
    if t_len > 1:
        # gamma_t ~ fwd_t * beta_t; the row sum z_t is also the normaliser of
        # xi_t(i, j) = fwd_t(i) A(i, j) right_t(j) / z_t, whose entries sum to 1
        torch.mul(fwd[:-1], back, out=post[:-1])
        z = post[:-1].sum(dim=-1, keepdim=True)  # (T-1, B, 1)
        post[:-1].div_(z)
        left = torch.div(fwd[:-1], z, out=ws["left"]).view(-1, h)  # ((T-1) B, H)
        counts.transition += (p.A * (left.T @ right.view(-1, h))).double()
    counts.initial += post[0].sum(0).double()
    counts.emission.index_add_(0, tokens, ws["post64"].copy_(post).view(-1, h))
    return ll


def m_step(old: HMM, counts: Counts, pseudocount: float, step_size: float) -> HMM:
    """New parameters from the summed counts; step_size < 1 interpolates in probability space."""
    new = counts.to_hmm(pseudocount, old.eos_token_id, old.metadata)
    if step_size >= 1:
        return new
    mix = lambda o, n: torch.log((1 - step_size) * o.double().exp() + step_size * n.double().exp()).float()
    return HMM(
        mix(old.log_initial.cpu(), new.log_initial),
        mix(old.log_transition.cpu(), new.log_transition),
        mix(old.log_emission.cpu(), new.log_emission),
        eos_token_id=old.eos_token_id,
        metadata=old.metadata,
    )


# ---------------------------------------------------------------------------------------------- the loop


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


def _checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def _write_checkpoint(out: Path, step: int, hmm: HMM, state: dict, keep: int) -> Path:
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
    for old in _checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_partial_checkpoints(out: Path) -> None:
    """Checkpoint directories a kill left half-written (never renamed into place)."""
    if (out / CHECKPOINTS).exists():
        for tmp in (out / CHECKPOINTS).glob(".tmp-step-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _latest_checkpoint(out: Path) -> tuple[HMM, dict] | None:
    for path in reversed(_checkpoint_dirs(out)):
        try:
            state = json.loads((path / STATE).read_text())
            return HMM.load(path), state
        except Exception as err:  # an unreadable checkpoint: fall back to the one before
            log.warning("%s: unreadable checkpoint (%s), trying an older one", path, err)
    return None


def _write_logs(out: Path, history: list[dict], plot: bool) -> None:
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
        _remove_partial_checkpoints(out)
    dist.barrier(ctx)
    resumed = _latest_checkpoint(out)
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
            _write_logs(out, run.history, run.cfg.plot)
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
    path = _write_checkpoint(run.out, run.step, run.hmm, state, run.cfg.keep_checkpoints)
    _write_logs(run.out, run.history, run.cfg.plot)
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
