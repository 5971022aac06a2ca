"""Class emission masses for the guide's backward tables: M[c, z] = sum of B[z, x] over the tokens x of DFA
token class c, without the banned tokens (those that split a character), in float64.

Summing all of B per constraint is a pass over the whole emission, and fast only with a (V, H) copy of it:
a second emission-sized buffer, slow to build, kept for this alone, and still a full pass per constraint.
A keyword constraint's classes are a few hundred tokens plus, per vocabulary block (word continuations / the
rest), one large class. So the HMM caches per-block totals (`HMM.block_totals`, once per model and
tokenizer), a constraint gathers only the tokens outside each block's largest class (~600 for five
keywords), and that class's mass is the block total minus what was gathered. The timings behind this choice
are in docs/benchmarks.md, "Measurements behind design choices".

Subtracting in float64 is exact to ~1e-16 of the block total, which is only a problem where the remainder
is a tiny part of the total: a hidden state that emits almost nothing but gathered tokens (a state
specialised on a keyword). Where the remainder is below `REMAINDER_FLOOR` of its total, that (block, state)
entry is summed directly over the class's tokens instead, so every mass keeps ~1e-10 relative precision.
"""

from __future__ import annotations

import numpy as np
import torch

from pc_core.hmm import HMM

REMAINDER_FLOOR = 1e-6  # float64 subtraction then leaves <= ~1e-10 relative error in the remainder


def class_masses(
    hmm: HMM,
    token_class: np.ndarray,
    num_classes: int,
    block_of: np.ndarray,
    block_key: str,
    banned: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masses (C, H) float64 without banned tokens, banned mass (H,) float64).

    token_class, block_of: (V,) ints; banned: (V,) bool; block_key names the partition `block_of` for the
    HMM's cache of block totals."""
    device = hmm.device
    num_blocks = int(block_of.max()) + 1
    counts = np.bincount(block_of * num_classes + token_class, minlength=num_blocks * num_classes)
    counts = counts.reshape(num_blocks, num_classes)  # (K, C) tokens per block and class
    complement = counts.argmax(axis=1)  # (K,) the largest class of each block, implied by subtraction
    gathered = np.flatnonzero((token_class != complement[block_of]) | banned)
    probs = _columns(hmm, gathered)  # (G, H)
    kept = torch.from_numpy(~banned[gathered]).to(device)  # (G,)
    masses = torch.zeros(num_classes, hmm.hidden_size, dtype=torch.float64, device=device)
    masses.index_add_(0, _long(token_class[gathered], device)[kept], probs[kept])
    totals = hmm.block_totals(_long(block_of, device), block_key)  # (K, H)
    remainder = totals.index_add(0, _long(block_of[gathered], device), probs, alpha=-1.0)  # (K, H)
    lossy = (remainder < REMAINDER_FLOOR * totals).cpu().numpy()  # (K, H)
    chunk = max(1, 2**22 // hmm.vocab_size)  # hidden states per (chunk, V) row copy, ~16 MB
    for k in np.flatnonzero(lossy.any(axis=1)):
        tokens = np.flatnonzero((block_of == k) & (token_class == complement[k]) & ~banned)
        states = np.flatnonzero(lossy[k])
        for start in range(0, len(states), chunk):
            rows = states[start : start + chunk].tolist()
            remainder[k, rows] = _columns(hmm, tokens, rows=rows).sum(dim=0)
    masses.index_add_(0, _long(complement, device), remainder.clamp_min(0))
    banned_mass = probs[~kept].sum(dim=0)  # (H,)
    return masses, banned_mass


def _columns(hmm: HMM, tokens: np.ndarray, rows: list[int] | None = None) -> torch.Tensor:
    """(n, H) float64 B[z, x] for the given tokens (only hidden states `rows`, when given: (n, len(rows)))."""
    log_b = hmm.log_emission if rows is None else hmm.log_emission[rows]
    # index_select, not log_b[:, ids]: advanced indexing of columns of a row-major (H, V) matrix is much
    # slower (docs/benchmarks.md, "Measurements behind design choices")
    return log_b.index_select(1, _long(tokens, hmm.device)).T.double().exp()


def _long(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, np.int64)).to(device)
