"""Stage 2: latent variable distillation (docs/method.md §8.2-8.3).

The LM's hidden state that predicts x_i is clustered by k-means into H-1 clusters; the cluster id is read
as the latent state z_i. Positions holding EOS (the end of the text and its padding) get the reserved state
H-1 instead, so that state is absorbing and emits EOS: after the first EOS every later token is EOS, exactly
as in the padded samples. With (x, z) observed the maximum-likelihood HMM is closed-form: count initial
states, transitions and emissions, add a pseudocount (every entry stays > 0), normalise rows.

k-means (distill/kmeans.py) is faiss's where faiss is installed (`pip install 'pcgen[faiss]'`), else a
plain torch implementation (k-means++ or random init from a seeded CPU generator, Lloyd iterations) that
runs on the GPU when present; `kmeans_backend` picks one. The centroids are fitted on at most
`kmeans_points` vectors; every position is then assigned block by block ((chunk, k) distances at a time),
so memory stays bounded by the fit set plus one block.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from distill import data
from distill.counts import Counts
from distill.errors import DistillError
from distill.kmeans import fit as fit_kmeans
from distill.kmeans import nearest, resolve_backend
from pc_core.hmm import HMM
from pc_core.lm import resolve_device

log = logging.getLogger(__name__)


@dataclass
class LVDConfig:
    data: str
    hidden_size: int
    out: str
    pseudocount: float = 1e-3
    kmeans_iters: int = 30
    kmeans_points: int = 1_000_000  # vectors the centroids are fitted on (a seeded subsample)
    kmeans_init: str = "kmeans++"  # or "random"
    kmeans_tol: float = 1e-4  # stop when the relative inertia improvement falls below this (torch)
    kmeans_backend: str = "auto"  # faiss when installed, else torch (distill/kmeans.py)
    chunk_size: int = 65536  # vectors per distance block
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if self.hidden_size < 2:
            raise DistillError(
                f"hidden size must be >= 2 (H-1 clusters plus the reserved end state), got {self.hidden_size}"
            )
        if self.kmeans_init not in ("kmeans++", "random"):
            raise DistillError(f"kmeans_init must be 'kmeans++' or 'random', got {self.kmeans_init!r}")
        if self.pseudocount <= 0:
            raise DistillError(
                f"pseudocount must be > 0 (zero probabilities break the guide), got {self.pseudocount}"
            )
        if self.kmeans_points < 1 or self.chunk_size < 1 or self.kmeans_iters < 0:
            raise DistillError("kmeans_points and chunk_size must be >= 1, kmeans_iters >= 0")
        resolve_backend(self.kmeans_backend)


# ---------------------------------------------------------------------------------------------- the stage


def _fit_set(emb: data.Embedded, eos: int, limit: int, seed: int, device: torch.device) -> torch.Tensor:
    """Up to `limit` non-EOS hidden states (seeded uniform subsample), (M, D) float32 on the device."""
    total = sum(int((np.asarray(t) != eos).sum()) for t, _ in emb.parts)
    if total == 0:
        raise DistillError(f"{emb.directory}: every stored position is EOS; nothing to cluster")
    gen = torch.Generator().manual_seed(seed)
    chosen = np.sort(torch.randperm(total, generator=gen)[:limit].numpy()) if total > limit else None
    picked, offset = [], 0
    for tokens, vectors in emb.chunks(4096):
        keep = tokens != eos  # (n, T)
        rows = vectors[keep]  # (m, D) float16
        if chosen is not None:
            lo, hi = np.searchsorted(chosen, [offset, offset + len(rows)])
            rows = rows[chosen[lo:hi] - offset]
        offset += int(keep.sum())
        picked.append(torch.from_numpy(np.ascontiguousarray(rows)).to(device).float())
    return torch.cat(picked)


def _settings(cfg: LVDConfig) -> dict:
    """What makes two LVD runs the same, as recorded in the HMM's metadata."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "device", "chunk_size")}
    settings["kmeans_backend"] = resolve_backend(cfg.kmeans_backend)  # what "auto" meant on this machine
    settings["data"] = str(Path(cfg.data).resolve())  # the same directory however it is spelled
    return settings


def _cluster(cfg: LVDConfig, emb: data.Embedded, eos: int, device: torch.device) -> tuple:
    """k-means of (a sample of) the hidden states into H-1 clusters: (centroids (H-1, D), inertia, backend)."""
    fit = _fit_set(emb, eos, cfg.kmeans_points, cfg.seed, device)  # (M, D)
    h = cfg.hidden_size
    log.info("k-means: %d vectors of dimension %d into %d clusters on %s", *fit.shape, h - 1, device)
    return fit_kmeans(
        fit,
        h - 1,
        cfg.kmeans_backend,
        cfg.kmeans_iters,
        cfg.seed,
        cfg.kmeans_init,
        cfg.chunk_size,
        cfg.kmeans_tol,
    )


def _observed_counts(
    cfg: LVDConfig, emb: data.Embedded, centroids: torch.Tensor, eos: int, device: torch.device
) -> Counts:
    """Counts of (token, nearest centroid) over every position, EOS positions in the end state H-1."""
    h = cfg.hidden_size
    counts = Counts(h, emb.manifest["vocab_size"], device)
    rows = max(1, cfg.chunk_size // emb.manifest["seq_len"])
    for tokens_np, vectors in emb.chunks(rows):
        tokens = torch.from_numpy(tokens_np.astype(np.int64)).to(device)  # (n, T)
        flat = torch.from_numpy(vectors).to(device).float().flatten(0, 1)  # (n*T, D)
        labels, _ = nearest(flat, centroids, cfg.chunk_size)
        states = torch.where(tokens == eos, h - 1, labels.view(tokens.shape))  # EOS positions: end state
        counts.add_observed(tokens, states)
    # the end state is absorbing and emits EOS even if no sample ended early
    counts.transition[h - 1, h - 1] += 1
    counts.emission[eos, h - 1] += 1
    return counts


def run_lvd(cfg: LVDConfig) -> HMM:
    cfg.validate()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    settings = _settings(cfg)
    if (out / "config.json").exists():
        done = json.loads((out / "config.json").read_text()).get("metadata", {}).get("lvd")
        if done == settings:
            log.info("%s already holds the LVD model for these settings, skipping", out)
            return HMM.load(out)
        raise DistillError(f"{out} already holds an HMM made with other settings; use a new --out")
    began = time.perf_counter()
    emb = data.Embedded(Path(cfg.data))
    manifest = emb.manifest
    eos, h, v = manifest["eos_token_id"], cfg.hidden_size, manifest["vocab_size"]
    if eos is None:
        raise DistillError(
            f"{cfg.data}: LVD reserves an end state that emits EOS, but the data has no EOS token"
        )
    centroids, inertia, backend = _cluster(cfg, emb, eos, device)  # the fit set is freed on return
    counts = _observed_counts(cfg, emb, centroids, eos, device)
    metadata = {
        "source": "lvd",
        "data": str(cfg.data),
        "lm": manifest.get("lm"),
        "tokenizer_fingerprint": manifest.get("tokenizer_fingerprint"),
        "end_state": h - 1,
        "kmeans_inertia": inertia,
        "kmeans_backend": backend,
        "lvd": settings,
    }
    hmm = counts.to_hmm(cfg.pseudocount, eos, metadata)
    hmm.validate("LVD model")
    hmm.save(out)
    log.info(
        "LVD: %d sequences counted, H = %d, V = %d, %.2f s -> %s",
        emb.num_sequences,
        h,
        v,
        time.perf_counter() - began,
        out,
    )
    return hmm
