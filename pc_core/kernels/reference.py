"""Torch implementations of the log-space primitives: the reference and the CPU path.

Every product runs in probability space after subtracting a per-row max ("max-shift"): one exp per input
element and one log per output element, instead of a logsumexp per multiply-add.
"""

from __future__ import annotations

import torch


def log_matmul_exp(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """out[r, n] = log sum_k exp(left[r, k]) * right[k, n].  left (R, K) log space, right (K, N) >= 0.

    Rows of `left` that are entirely -inf give -inf rows.
    """
    shift = left.max(dim=1, keepdim=True).values  # (R, 1)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    probs = torch.exp(left - shift).to(right.dtype)  # (R, K), in [0, 1]
    out = probs @ right  # (R, N)
    return torch.log(out.float()) + shift


def edge_logsumexp(
    log_mass: torch.Tensor, log_values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_states: int
) -> torch.Tensor:
    """out[s, z] = log sum_{e: src[e] = s} exp(log_mass[e, z] + log_values[dst[e], z]).

    log_mass (E, H), log_values (S, H), src/dst (E,) long. States without edges get -inf.
    """
    terms = log_mass + log_values[dst]  # (E, H)
    h = terms.shape[1]
    peak = torch.full((num_states, h), float("-inf"), device=terms.device, dtype=terms.dtype)
    peak = peak.scatter_reduce(0, src[:, None].expand(-1, h), terms, reduce="amax", include_self=True)
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    total = torch.zeros_like(peak).index_add_(0, src, torch.exp(terms - safe_peak[src]))
    return torch.log(total) + safe_peak
