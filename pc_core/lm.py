"""The language model side: loading a Hugging Face causal LM, and a batched KV cache that rows of several
requests share (left-padded, so prompts of different lengths decode in one forward per step)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """ "auto": bf16 on CUDA when supported (else fp16), fp32 on CPU."""
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}  # fmt: skip
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(table))}")
    return table[dtype]


def load_lm(name_or_path: str, device: str | None = "auto", dtype: str | None = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) through transformers (hub ids work offline from the HF cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=resolve_dtype(dtype, dev))
    model.to(dev).eval()
    return model, tokenizer


def lm_fingerprint(model: Any) -> str:
    """Name, config and a sample of weights: cheap, and different for different checkpoints."""
    h = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    h.update(model.config.to_json_string().encode())
    for i, p in enumerate(model.parameters()):
        if i >= 4:
            break
        h.update(p.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:32]


@dataclass
class KVBatch:
    """Per-layer keys/values (N, heads, L, d), left-padded; mask (N, L); next position per row (N,)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor  # (N, L) long, 0 = padding
    positions: torch.Tensor  # (N,) long: real tokens so far

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @torch.no_grad()
    def forward(self, model: Any, tokens: torch.Tensor) -> tuple[KVBatch, torch.Tensor]:
        """Feed one token per row; return the grown cache and last-position logits (N, V_lm), fp32."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=list(zip(self.keys, self.values)), config=model.config)
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        out = model(
            input_ids=tokens.reshape(-1, 1),
            attention_mask=mask,
            position_ids=self.positions.reshape(-1, 1),
            past_key_values=cache,
            use_cache=True,
        )
        layers = out.past_key_values.layers
        grown = KVBatch(
            [lay.keys for lay in layers], [lay.values for lay in layers], mask, self.positions + 1
        )
        return grown, out.logits[:, -1].float()

    @classmethod
    @torch.no_grad()
    def prefill(cls, model: Any, prompt_ids: list[int]) -> tuple[KVBatch, torch.Tensor]:
        """Run the prompt (one row); logits for the first generated token (1, V_lm)."""
        device = next(model.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)
        out = model(input_ids=ids, use_cache=True)
        layers = out.past_key_values.layers
        batch = cls(
            [lay.keys for lay in layers],
            [lay.values for lay in layers],
            torch.ones_like(ids),
            torch.tensor([len(prompt_ids)], device=device),
        )
        return batch, out.logits[:, -1].float()

    def select(self, index: torch.Tensor) -> KVBatch:
        """Rows in `index` order (reorder, duplicate, drop); leading all-padding columns are trimmed."""
        mask = self.mask.index_select(0, index)
        keep = int((mask.sum(0) > 0).nonzero()[0]) if mask.numel() and mask.any() else 0
        return KVBatch(
            [k.index_select(0, index)[:, :, keep:] for k in self.keys],
            [v.index_select(0, index)[:, :, keep:] for v in self.values],
            mask[:, keep:],
            self.positions.index_select(0, index),
        )

    @staticmethod
    def concat(batches: list[KVBatch]) -> KVBatch:
        """Stack rows of several batches, left-padding to the longest."""
        batches = [b for b in batches if b.rows]
        length = max(b.mask.shape[1] for b in batches)

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = length - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim)

        layers = range(len(batches[0].keys))
        return KVBatch(
            [torch.cat([pad(b.keys[i], 2) for b in batches]) for i in layers],
            [torch.cat([pad(b.values[i], 2) for b in batches]) for i in layers],
            torch.cat([pad(b.mask, 1) for b in batches]),
            torch.cat([b.positions for b in batches]),
        )
