"""Triton kernel: out = log(exp(left - shift) @ right) + shift, fused (or the linear product, LOG=False).

The torch path materialises exp(left - shift) (R x K) and the raw product (R x N) before taking the log;
this kernel applies the exp while loading `left` tiles and the log while storing, so the product is the
only pass over `right` (the emission matrix in a guide step: H x V, 0.8 GB at production size). Tested
against the torch reference under TRITON_INTERPRET=1 on CPU. No GPU was available when it was written,
so it is opt-in (PCGEN_KERNELS=triton) until a measurement says it beats cuBLAS + two elementwise passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _log_matmul_exp_kernel(
    left_ptr, shift_ptr, right_ptr, out_ptr,
    R, K, N,
    stride_lr, stride_lk, stride_rk, stride_rn, stride_or, stride_on,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, LOG: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    shift = tl.load(shift_ptr + rows, mask=rows < R, other=0.0)
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        lmask = (rows[:, None] < R) & (k[None, :] < K)
        left = tl.load(
            left_ptr + rows[:, None] * stride_lr + k[None, :] * stride_lk, mask=lmask, other=float("-inf")
        )
        probs = tl.exp(left - shift[:, None])
        rmask = (k[:, None] < K) & (cols[None, :] < N)
        right = tl.load(right_ptr + k[:, None] * stride_rk + cols[None, :] * stride_rn, mask=rmask, other=0.0)
        acc += tl.dot(probs, right.to(tl.float32), input_precision=PRECISION)
    if LOG:
        out = tl.log(acc) + shift[:, None]
    else:
        out = acc
    omask = (rows[:, None] < R) & (cols[None, :] < N)
    tl.store(out_ptr + rows[:, None] * stride_or + cols[None, :] * stride_on, out, mask=omask)


def _launch(left: torch.Tensor, right: torch.Tensor, precision: str, log: bool):
    r, k = left.shape
    k2, n = right.shape
    assert k == k2, (left.shape, right.shape)
    left = left.float()
    shift = left.max(dim=1).values
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift)).contiguous()
    out = torch.empty((r, n), device=left.device, dtype=torch.float32)
    block_r = 16 if r <= 16 else 32 if r <= 32 else 64
    grid = (triton.cdiv(r, block_r), triton.cdiv(n, 64))
    _log_matmul_exp_kernel[grid](
        left, shift, right, out, r, k, n,
        left.stride(0), left.stride(1), right.stride(0), right.stride(1), out.stride(0), out.stride(1),
        BLOCK_R=block_r, BLOCK_N=64, BLOCK_K=32, PRECISION=precision, LOG=log,
    )  # fmt: skip
    return out, shift


def log_matmul_exp(left: torch.Tensor, right: torch.Tensor, precision: str = "ieee") -> torch.Tensor:
    """Same contract as reference.log_matmul_exp. `precision`: "ieee" (exact fp32) or "tf32"."""
    return _launch(left, right, precision, log=True)[0]


def matmul_exp(
    left: torch.Tensor, right: torch.Tensor, precision: str = "ieee"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as reference.matmul_exp_nt with right given (K, N): (linear product, row shift)."""
    return _launch(left, right, precision, log=False)
