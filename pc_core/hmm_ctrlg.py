"""Ctrl-G's HMM checkpoints, read by `HMM.load` and converted by `pcgen import-hmm`.

Ctrl-G (joshuacnf/Ctrl-G, ctrlg/hmm.py) saves with huggingface_hub's PyTorchModelHubMixin: `config.json`
{hidden_states, vocab_size, eos_token_id} + `model.safetensors` (`pytorch_model.bin` from a huggingface_hub
older than 0.21) {alpha_exp (H, H) transition in probability space, beta (H, V) log emission, gamma (H,) log
initial}, rows indexed by hidden state: ctrlg/hmm_gpt2-large_common-gen_4096, and
ctrlg/hmm_tulu2-7b_writing-prompts_32768 (H = 32768 over Llama-2's 32,000 tokens, EOS 2), converted a block of
rows at a time from the memory-mapped file (`read_ctrlg`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pc_core.errors import HMMFormatError
from pc_core.hmm_checkpoint import PROB_FLOOR, WEIGHTS, Parameters, require

CTRLG_TORCH_WEIGHTS = "pytorch_model.bin"  # what PyTorchModelHubMixin wrote before huggingface_hub 0.21
CTRLG_BLOCK_BYTES = 2**27  # float64 bytes per block of rows converted at a time (128 MiB)


def read_ctrlg(path: Path, config: dict) -> Parameters:
    """A Ctrl-G checkpoint (the layout in the module docstring): gamma and beta are log-softmax rows, alpha_exp
    softmax rows, each row a hidden state; the vocabulary is the LM's, specials included (Llama-2: <unk> <s>
    </s> at 0..2, EOS 2), so token ids need no mapping. gamma may also be stored as (1, H)."""
    weights = _CtrlGWeights(path)
    h, v = config.get("hidden_states"), config.get("vocab_size")
    expected = {"alpha_exp": [(h, h)], "beta": [(h, v)], "gamma": [(h,), (1, h)]}
    for name, shapes in expected.items():
        if weights.shape(name) not in shapes:
            raise HMMFormatError(
                f"{weights.file}: {name} has shape {weights.shape(name)}, config.json (hidden_states={h}, "
                f"vocab_size={v}) says {' or '.join(str(s) for s in shapes)}"
            )
    return Parameters(
        _log_rows_blockwise(weights, "gamma", log_space=True).reshape(-1),
        _log_rows_blockwise(weights, "alpha_exp", log_space=False),
        _log_rows_blockwise(weights, "beta", log_space=True),
        config.get("eos_token_id"),
        {"source": str(path), "imported_from": "ctrl-g"},
    )


class _CtrlGWeights:
    """Rows of the Ctrl-G tensors, read a block at a time: safetensors through `safe_open` (memory-mapped),
    a torch file through `torch.load(mmap=True, weights_only=True)` (no pickled objects)."""

    def __init__(self, path: Path) -> None:
        self.file = path / WEIGHTS if (path / WEIGHTS).exists() else path / CTRLG_TORCH_WEIGHTS
        self._safe: Any = None
        self._tensors: dict[str, torch.Tensor] = {}
        if self.file.name == WEIGHTS:
            from safetensors import safe_open

            try:
                self._safe = safe_open(str(self.file), framework="pt", device="cpu")
                self.names = set(self._safe.keys())
            except Exception as err:
                raise HMMFormatError(f"{self.file}: not a readable safetensors file ({err})") from err
        elif self.file.exists():
            try:
                data = torch.load(str(self.file), map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise HMMFormatError(f"{self.file}: not a readable torch file ({err})") from err
            if not isinstance(data, dict):
                raise HMMFormatError(f"{self.file}: expected a state dict of tensors")
            self._tensors = {k: t for k, t in data.items() if isinstance(t, torch.Tensor)}
            self.names = set(self._tensors)
        else:
            raise HMMFormatError(f"{path}: missing {WEIGHTS} (or {CTRLG_TORCH_WEIGHTS})")
        require({n: None for n in self.names}, ("alpha_exp", "beta", "gamma"), self.file)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._safe is not None:
            return tuple(self._safe.get_slice(name).get_shape())
        return tuple(self._tensors[name].shape)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a 2-D tensor, or the whole of a 1-D one."""
        if self._safe is not None:
            piece = self._safe.get_slice(name)
            return piece[start:stop] if len(piece.get_shape()) == 2 else piece[:]
        tensor = self._tensors[name]
        return tensor[start:stop] if tensor.dim() == 2 else tensor


def _log_rows_blockwise(weights: _CtrlGWeights, name: str, log_space: bool) -> torch.Tensor:
    """A Ctrl-G tensor as pcgen's fp32 log-space rows, normalised as hmm_checkpoint.log_rows does (zeros
    floored at PROB_FLOOR, rows renormalised in float64), one block of rows at a time: the whole tensor never
    exists in float64, so a 32768 x 32000 emission imports with its fp32 result (3.9 GiB) and a 128 MiB block
    in memory rather than several float64 copies (8 GiB each)."""
    shape = weights.shape(name)
    height, width = (1, shape[0]) if len(shape) == 1 else shape
    out = torch.empty(height, width, dtype=torch.float32)  # (rows, width)
    step = max(1, CTRLG_BLOCK_BYTES // (8 * width))
    for start in range(0, height, step):
        stop = min(height, start + step)
        block = weights.rows(name, start, stop).reshape(stop - start, width).to(torch.float64, copy=True)
        if log_space:
            block = block.exp_()
        block = block.clamp_min_(PROB_FLOOR)
        out[start:stop] = torch.log(block / block.sum(-1, keepdim=True))
    return out if len(shape) == 2 else out[0]
