"""Torch implementations of the log-space primitives: the reference and the CPU path.

Every product runs in probability space after subtracting a per-row max ("max-shift"): one exp per input
element and one log per output element, instead of a logsumexp per multiply-add.
"""

from __future__ import annotations

import torch

from pc_core.kernels import onednn_packed

LOSSLESS = 1e-30  # smallest relative magnitude the scaled linear path keeps (float32 normals end at 1e-38)


def log_matmul_exp(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """out[r, n] = log sum_k exp(left[r, k]) * right[k, n].  left (R, K) log space, right (K, N) >= 0.

    Rows of `left` that are entirely -inf give -inf rows.
    """
    shift = left.max(dim=1, keepdim=True).values  # (R, 1)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    probs = torch.exp(left - shift).to(right.dtype)  # (R, K), in [0, 1]
    out = (probs @ right).float()  # (R, N)
    return out.log_().add_(shift)


def edge_logsumexp(
    log_mass: torch.Tensor, log_values: torch.Tensor, edge_index: torch.Tensor, edge_dst: torch.Tensor
) -> torch.Tensor:
    """out[s, z] = log sum_j exp(log_mass[edge_index[s, j], z] + log_values[edge_dst[s, j], z]).

    log_mass (E + 1, H) with a last all -inf row that padding slots point at; log_values (S', H);
    edge_index / edge_dst (S, K) long, one row per source state padded to the largest out-degree K.
    A dense (S, K, H) logsumexp instead of scatter ops, which were slower on CPU at guide sizes
    (docs/benchmarks.md, "Measurements behind design choices"). States are processed in chunks so the
    (chunk, K, H) intermediate stays under ~256 MB.
    """
    s, k = edge_index.shape
    h = log_mass.shape[1]
    chunk = max(1, (64 * 2**20) // max(1, k * h))
    out = torch.empty(s, h, device=log_mass.device, dtype=torch.float32)
    for start in range(0, s, chunk):
        idx, dst = edge_index[start : start + chunk], edge_dst[start : start + chunk]
        terms = log_mass[idx] + log_values[dst]  # (chunk, K, H)
        out[start : start + chunk] = torch.logsumexp(terms, dim=1)
    return out


def matmul_exp_nt(
    left: torch.Tensor, right_t: torch.Tensor | onednn_packed.Packed, raw: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-space form: (out, shift) with out[r, n] * exp(shift[r]) = sum_k exp(left[r, k]) * right_t[n, k].

    right_t (N, K) >= 0, e.g. the (V, H) emission; out (R, N) float32, shift (R,), the row max of `left`
    (0 for all -inf rows). Callers that combine rows (a ratio of two products) take one log instead of two.
    `right_t` may be given packed (onednn_packed), the CPU fast path at a guide step's row counts (see that
    module). Plain on CPU, the product is taken as (right_t @ probs^T)^T: with few rows MKL's sgemm handles
    that layout much better than probs @ right with right stored (K, N); the result is then a transposed
    view. Timings: docs/benchmarks.md, "Measurements behind design choices". `raw`: out in the dtype the
    product gave (bfloat16 with a bfloat16 right operand) instead of float32, for callers that cast as they
    read it (guide_ratio.log_ratio): exactly the float32 values then, without a float32 copy of every row.
    """
    shift = torch.nan_to_num(left.amax(dim=1), nan=0.0, posinf=0.0, neginf=0.0)  # (R,), 0: no finite entry
    probs = (left - shift[:, None]).exp_()  # (R, K)
    if isinstance(right_t, onednn_packed.Packed):  # casts to its dtype as it pads (a guide step's few rows)
        out = onednn_packed.matmul_nt(probs, right_t)  # (R, N)
        return (out if raw else out.float()), shift
    probs = probs.to(right_t.dtype)
    if right_t.is_cuda:
        out = probs @ right_t.T  # cuBLAS takes the transposed operand as a flag
    else:
        out = (right_t @ probs.T).T  # (R, N) view of an (N, R) result
    return (out if raw else out.float()), shift


def log_matmul_exp_nt(left: torch.Tensor, right_t: torch.Tensor | onednn_packed.Packed) -> torch.Tensor:
    """out[r, n] = log sum_k exp(left[r, k]) * right_t[n, k]: matmul_exp_nt taken back to log space."""
    out, shift = matmul_exp_nt(left, right_t)
    return out.log_().add_(shift[:, None])


def edge_scaled_sum(
    mass: torch.Tensor,
    values: torch.Tensor,
    value_log_scale: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    num_states: int,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The edge sum of the backward step in scaled linear space (the fast path; see guide.py).

    Values are rows in [0, 1] times exp(value_log_scale[row]). Returns (W (S, H) rows with max 1 or all 0,
    log scale (S,), lossy) such that W[s] * exp(scale[s]) = sum_{e: src[e] = s} mass[e] * values[dst[e]] *
    exp(value_log_scale[dst[e]]). Three passes over (E, H) and no transcendental per element.
    `lossy` is True when an edge's scale lies more than ~69 nats (1e-30) below its source's largest, where
    float32 would round its terms away: the caller must then use the exact log-space path.
    """
    h = values.shape[1]
    dst_scale = value_log_scale[dst]  # (E,)
    peak = torch.full((num_states,), float("-inf"), device=values.device, dtype=values.dtype)
    peak = peak.scatter_reduce(0, src, dst_scale, reduce="amax", include_self=True)  # (S,)
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    coef = torch.exp(dst_scale - safe_peak[src])  # (E,), 0 for -inf scales
    lossy = bool(((coef < LOSSLESS) & torch.isfinite(dst_scale)).any())
    total = torch.zeros(num_states, h, device=values.device, dtype=values.dtype)
    # Edges in chunks of ~2 MB so the (chunk, H) terms stay in cache: one (E, H) temporary is a fresh buffer
    # per call, and its first-touch page faults dominated the call (docs/benchmarks.md, "Measurements behind
    # design choices"). On CUDA one chunk takes everything.
    chunk = len(src) if values.is_cuda else max(1, 2**19 // max(1, h))
    for start in range(0, len(src), chunk):
        part = slice(start, start + chunk)
        terms = values.index_select(0, dst[part]).mul_(mass[part]).mul_(coef[part, None])  # (chunk, H)
        total.index_add_(0, src[part], terms)
    rowmax = total.max(dim=1).values  # (S,)
    positive = rowmax > 0
    total.div_(torch.where(positive, rowmax, torch.ones_like(rowmax))[:, None])
    scale = torch.where(positive, safe_peak + torch.log(torch.where(positive, rowmax, torch.ones_like(rowmax))),
                        torch.full_like(rowmax, float("-inf")))  # fmt: skip
    return total, scale, lossy
