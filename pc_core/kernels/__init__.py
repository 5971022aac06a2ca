"""Log-space kernels with a torch path everywhere and Triton paths for CUDA.

Selection (PCGEN_KERNELS): "torch" (default), "triton" (CUDA, or the CPU interpreter under
TRITON_INTERPRET=1), "auto" (Triton on CUDA when importable). The default stays torch until a GPU
measurement (benchmarks/guide.py) shows the Triton path faster; see docs/benchmarks.md. On CPU the
emission product takes oneDNN with the matrix packed once (onednn_packed), when torch provides it.
`emission_dtype` picks the dtype of that emission (the guide_emission_dtype setting).
"""

from __future__ import annotations

import functools
import os

import torch

from pc_core.kernels import onednn_packed, reference

EMISSION_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

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
    left: torch.Tensor, right_t: torch.Tensor | onednn_packed.Packed, raw: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """log_matmul_exp_nt left in linear space: (out (R, N), shift (R,)), out * exp(shift) the product.
    `raw`: out may be in the product's own dtype (bfloat16 with a bfloat16 emission) instead of float32."""
    if _backend(left) == "triton" and isinstance(right_t, torch.Tensor):
        from pc_core.kernels.triton_log_matmul import matmul_exp as fast

        return fast(left, right_t.T)
    return reference.matmul_exp_nt(left, right_t, raw)


def edge_logsumexp(
    log_mass: torch.Tensor, log_values: torch.Tensor, edge_index: torch.Tensor, edge_dst: torch.Tensor
) -> torch.Tensor:
    """Per source state, logsumexp over its edges of (edge mass + value at the edge's destination)."""
    if _backend(log_mass) == "triton":
        from pc_core.kernels.triton_edge_logsumexp import edge_logsumexp as fast

        return fast(log_mass, log_values, edge_index, edge_dst)
    return reference.edge_logsumexp(log_mass, log_values, edge_index, edge_dst)


def emission_dtype(device: torch.device | str, setting: str = "auto") -> torch.dtype:
    """The dtype of the emission a guide step multiplies with (docs/method.md §5.9): "float32", "bfloat16",
    or "auto": bfloat16 on an accelerator, and on a CPU where oneDNN has a bfloat16 product (the packed path:
    a step reads the (V, H) emission once, so half the bytes is about half the time; measured on the dev
    box's AVX-512 CPU, one thread, (2, 256) x (256, 50,257): 1.5 ms against 3.0 ms in float32), else float32.
    The error this adds to the guide's values is bounded in docs/method.md; the mask (which tokens get
    -inf) does not depend on it."""
    if setting != "auto":
        return EMISSION_DTYPES[setting]
    if torch.device(device).type != "cpu":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_bfloat16_product() else torch.float32


@functools.cache
def _cpu_bfloat16_product() -> bool:
    """Does oneDNN multiply bfloat16 natively here, with the packed layout available."""
    try:
        native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    return native and onednn_packed.pack(torch.ones(8, 8, dtype=torch.bfloat16)) is not None
