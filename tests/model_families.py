"""Tiny causal LMs of several transformers families, built locally (no downloads), each saved with a tokenizer
trained here so that `pc_core.lm.load_lm(path)` loads it:

  * gpt2: GPT2LMHeadModel (absolute positions, `n_positions`) with the GPT-2 style byte-level BPE;
  * llama: LlamaForCausalLM (rotary positions, grouped-query attention, `max_position_embeddings`) with the
    Llama-2 style SentencePiece BPE (byte fallback, <s> / </s>);
  * qwen2: Qwen2ForCausalLM (rotary positions, q/k/v biases, GQA) with a byte-level BPE.

Random weights: the models say nothing sensible, but every code path that reads their caches, positions and
configs runs as it would on the real ones.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import build_tokenizer
from tokenizer_families import build_byte_level, build_llama2

FAMILIES = ["gpt2", "llama", "qwen2"]
MAX_POSITIONS = 128


def _config(family: str, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "gpt2":
        return GPT2Config(
            vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=32, n_layer=2, n_head=2, **ids
        )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: the cache holds fewer heads than the queries
        max_position_embeddings=MAX_POSITIONS,
        **ids,
    )


def build_family_lm(family: str, directory: Path, seed: int = 0) -> Path:
    """A random-init 2-layer model of `family` over its tokenizer, saved (with the tokenizer) in directory."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = {"gpt2": build_tokenizer, "llama": build_llama2, "qwen2": build_byte_level}[family](directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(family, tokenizer)).eval()
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
