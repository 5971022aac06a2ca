"""CPU fast path for products with the (V, H) emission: oneDNN with the matrix reordered once.

torch's default CPU product (MKL sgemm) handles few rows badly: its time grows with every row, while the
packed oneDNN product is bound by reading the emission once up to ~8 rows, so a guide step's extra rows (the
marginal next to each joint) are nearly free there; from ~16 rows it is compute-bound and time grows with
rows. oneDNN picks a slower kernel for 1-2 rows, hence the padding to MIN_ROWS. Measured by
`python -m benchmarks.row_product` (docs/benchmarks.md, section "rows" and "Measurements behind design
choices").
The ops are internal to torch (inductor's CPU weight prepacking); when they are missing or fail, `pack`
returns None and callers keep the plain torch product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_ROWS = 4


@dataclass(frozen=True)
class Packed:
    """An (N, K) matrix in oneDNN's blocked layout (maybe with zero rows appended: N' >= N); only
    `matmul_nt` reads it."""

    weight: torch.Tensor  # opaque mkldnn tensor, (N', K)
    dtype: torch.dtype
    columns: int  # N: the product's columns that are kept


def padded_size(n: int) -> int:
    """n rounded up to one of four sizes per octave (at most 25% more), at least 64."""
    if n <= 64:
        return 64
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


def pack(right_t: torch.Tensor, pad: bool = False) -> Packed | None:
    """(N, K) plain CPU matrix -> Packed for `matmul_nt`, or None when unavailable.

    `pad` for matrices whose N differs from one constraint to the next (a guide's own tokens): oneDNN keeps a
    compiled kernel per operand shape in a process-wide cache that outlives the matrix, so every distinct N
    would leave one behind (measured: RSS grew ~100 MB over 1,000 distinct constraints). Padded to
    `padded_size(N)`, a vocabulary gives a few dozen shapes."""
    if right_t.is_cuda or right_t.dtype not in (torch.float32, torch.bfloat16):
        return None
    columns = right_t.shape[0]
    if pad and padded_size(columns) > columns:
        zeros = right_t.new_zeros(padded_size(columns) - columns, right_t.shape[1])
        right_t = torch.cat([right_t, zeros])
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        weight = torch.ops.mkldnn._reorder_linear_weight(right_t.contiguous(), MIN_ROWS)
    except (AttributeError, RuntimeError):
        return None
    return Packed(weight, right_t.dtype, columns)


def matmul_nt(left: torch.Tensor, packed: Packed) -> torch.Tensor:
    """left (R, K) @ right_t^T (K, N) -> (R, N), right_t given packed; left is cast to its dtype."""
    rows = left.shape[0]
    if rows < MIN_ROWS:  # zero rows below, cast in the copy (the rounding of .to): fewer ops per step
        padded = left.new_zeros(MIN_ROWS, left.shape[1], dtype=packed.dtype)
        padded[:rows] = left
        left = padded
    else:
        left = left.to(packed.dtype).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(left, packed.weight, None, "none", [], "")
    return out[:rows, : packed.columns]
