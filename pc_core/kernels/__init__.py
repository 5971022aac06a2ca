"""Log-space kernels with a torch path everywhere and Triton paths for CUDA.

Selection (PCGEN_KERNELS): "torch" (default), "triton" (CUDA, or the CPU interpreter under
TRITON_INTERPRET=1), "auto" (Triton on CUDA when importable). The default stays torch until a GPU
measurement (benchmarks/guide.py) shows the Triton path faster; see docs/benchmarks.md. On CPU the
emission product takes oneDNN with the matrix packed once (onednn_packed), when torch provides it.
"""

from __future__ import annotations

import os

import torch

from pc_core.kernels import onednn_packed, reference

# gathers, products and index_add only: plain torch is the one path on every device
edge_scaled_sum = reference.edge_scaled_sum


def _backend(tensor: torch.Tensor) -> str:
    choice = os.environ.get("PCGEN_KERNELS", "torch").lower()
    if choice == "torch":
        return "torch"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if not (tensor.is_cuda or interpret):
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        if choice == "triton":
            raise
        return "torch"
    return "triton"


def log_matmul_exp(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(R, K) log-space rows times a (K, N) probability matrix, back to log space."""
    if _backend(left) == "triton":
        from pc_core.kernels.triton_log_matmul import log_matmul_exp as fast

        return fast(left, right)
    return reference.log_matmul_exp(left, right)


def log_matmul_exp_nt(left: torch.Tensor, right_t: torch.Tensor | onednn_packed.Packed) -> torch.Tensor:
    """Like log_matmul_exp with the right operand given transposed, (N, K): the (V, H) emission layout.

    A packed right operand (CPU) always takes the torch path, which owns that layout.
    """
    if _backend(left) == "triton" and isinstance(right_t, torch.Tensor):
        from pc_core.kernels.triton_log_matmul import log_matmul_exp as fast

        return fast(left, right_t.T)
    return reference.log_matmul_exp_nt(left, right_t)


def matmul_exp_nt(
    left: torch.Tensor, right_t: torch.Tensor | onednn_packed.Packed
) -> tuple[torch.Tensor, torch.Tensor]:
    """log_matmul_exp_nt left in linear space: (out (R, N), shift (R,)), out * exp(shift) the product."""
    if _backend(left) == "triton" and isinstance(right_t, torch.Tensor):
        from pc_core.kernels.triton_log_matmul import matmul_exp as fast

        return fast(left, right_t.T)
    return reference.matmul_exp_nt(left, right_t)


def edge_logsumexp(
    log_mass: torch.Tensor, log_values: torch.Tensor, edge_index: torch.Tensor, edge_dst: torch.Tensor
) -> torch.Tensor:
    """Per source state, logsumexp over its edges of (edge mass + value at the edge's destination)."""
    if _backend(log_mass) == "triton":
        from pc_core.kernels.triton_edge_logsumexp import edge_logsumexp as fast

        return fast(log_mass, log_values, edge_index, edge_dst)
    return reference.edge_logsumexp(log_mass, log_values, edge_index, edge_dst)
