"""Triton kernel for the backward-table step's edge sum (method notes, section 4):

    W[s, z] = log sum_{edges e out of s} exp(logE[e, z] + logU[dst[e], z])

One program per (state, block of hidden states) walks that state's edges (CSR order) with an online
logsumexp, so the (E x H) intermediate the torch path builds is never written. Opt-in like log_matmul.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _edge_logsumexp_kernel(
    mass_ptr, values_ptr, offsets_ptr, dst_ptr, out_ptr, H,
    stride_m, stride_v, stride_o,
    BLOCK_H: tl.constexpr,
):  # fmt: skip
    s = tl.program_id(0)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = hs < H
    start = tl.load(offsets_ptr + s)
    end = tl.load(offsets_ptr + s + 1)
    peak = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_H,), tl.float32)
    for e in range(start, end):
        d = tl.load(dst_ptr + e)
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
    log_mass: torch.Tensor, log_values: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, num_states: int
) -> torch.Tensor:
    """Same contract as reference.edge_logsumexp; `src` must be sorted (edges grouped by source)."""
    e, h = log_mass.shape
    counts = torch.bincount(src, minlength=num_states)
    offsets = torch.zeros(num_states + 1, dtype=torch.int64, device=src.device)
    offsets[1:] = torch.cumsum(counts, 0)
    out = torch.empty((num_states, h), device=log_mass.device, dtype=torch.float32)
    log_mass, log_values = log_mass.float().contiguous(), log_values.float().contiguous()
    grid = (num_states, triton.cdiv(h, 128))
    _edge_logsumexp_kernel[grid](
        log_mass, log_values, offsets, dst.contiguous(), out, h,
        log_mass.stride(0), log_values.stride(0), out.stride(0), BLOCK_H=128,
    )  # fmt: skip
    return out
