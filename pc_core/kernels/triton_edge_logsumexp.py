"""Triton kernel for the backward-table step's edge sum (docs/method.md §5.2):

    W[s, z] = log sum_{edges e out of s} exp(logE[e, z] + logU[dst[e], z])

Edges come padded per source state, (S, K) indices into the (E + 1, H) masses (the last row is all -inf)
and into the destination values. One program per (state, block of hidden states) walks the state's K
slots with an online logsumexp, so the (S, K, H) intermediate of the torch path is never written.
Opt-in like triton_log_matmul.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _edge_logsumexp_kernel(
    mass_ptr, values_ptr, index_ptr, dst_ptr, out_ptr, H, K,
    stride_m, stride_v, stride_o,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(0)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hs < H
    peak = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_H,), tl.float32)
    for j in range(0, K):
        e = tl.load(index_ptr + s * K + j)
        d = tl.load(dst_ptr + s * K + j)
        term = tl.load(mass_ptr + e * stride_m + hs, mask=hmask, other=float("-inf")) + tl.load(
            values_ptr + d * stride_v + hs, mask=hmask, other=float("-inf")
        )
        new_peak = tl.maximum(peak, term)
        safe = tl.where(new_peak == float("-inf"), 0.0, new_peak)
        total = total * tl.exp(tl.where(peak == float("-inf"), float("-inf"), peak - safe)) + tl.exp(
            term - safe
        )
        peak = new_peak
    safe = tl.where(peak == float("-inf"), 0.0, peak)
    tl.store(out_ptr + s * stride_o + hs, tl.log(total) + safe, mask=hmask)


def edge_logsumexp(
    log_mass: torch.Tensor, log_values: torch.Tensor, edge_index: torch.Tensor, edge_dst: torch.Tensor
) -> torch.Tensor:
    """Same contract as reference.edge_logsumexp."""
    s, k = edge_index.shape
    h = log_mass.shape[1]
    out = torch.empty((s, h), device=log_mass.device, dtype=torch.float32)
    log_mass, log_values = log_mass.float().contiguous(), log_values.float().contiguous()
    grid = (s, triton.cdiv(h, 128))
    _edge_logsumexp_kernel[grid](
        log_mass, log_values, edge_index.contiguous(), edge_dst.contiguous(), out, h, k,
        log_mass.stride(0), log_values.stride(0), out.stride(0), BLOCK_H=128,
    )  # fmt: skip
    return out
