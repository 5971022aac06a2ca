"""The language model side: loading a Hugging Face causal LM, and a batched KV cache that rows of several
requests share (left-padded, so prompts of different lengths decode in one forward per step).

Any transformers causal LM with a KV cache works (GPT-2, Llama, Qwen2, ...): the cache is read and written
per layer through transformers' `Cache` objects, and passed under the keyword the model's forward expects
(`cache` in current transformers, `past_key_values` before the rename; see `cache_kwarg`). The context
length comes from the config (`max_positions`).

Names shared with the service and the distillation stages: `resolve_device` and the dtype table `DTYPES`
with `resolve_dtype`; `load_lm` / `load_tokenizer` (a wrong source is one ModelLoadError line, see
pc_core.hub); `check_pairing` (an HMM next to the tokenizer it was distilled for).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

# dtype names accepted everywhere (`pcgen generate/serve --dtype`, PCGEN_DTYPE, `pcgen distill sample
# --dtype`); "auto" is resolved per device by resolve_dtype
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | None = "auto") -> torch.device:
    """The torch device for a device setting.

    "auto" (or None): this process's GPU when CUDA is available, else the CPU. "This process's GPU" is
    cuda:LOCAL_RANK, so every process that torchrun starts gets its own GPU; outside torchrun LOCAL_RANK is
    unset and it is cuda:0. Anything else ("cpu", "cuda", "cuda:1", "mps") is passed to torch.device as is.
    """
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The torch dtype for a name in DTYPES. "auto" (or None): bfloat16 on CUDA when the GPU supports it
    (else float16), float32 elsewhere. An unknown name raises ValueError listing the known ones."""
    if name is None:
        name = "auto"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    if DTYPES[name] is not None:
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_lm(name_or_path: str, device: str | None = "auto", dtype: str | None = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) of any transformers causal LM, in eval mode on `device` (see resolve_device) with
    weights in `dtype` (see resolve_dtype). Hub ids work offline from the HF cache. A source that cannot be
    loaded (no such directory, not a saved model, a hub id that is not cached while offline) raises
    ModelLoadError with one line, without waiting for the hub (pc_core.hub)."""
    from pc_core.hub import LM_FILES, check_source

    local_only = check_source(name_or_path, "model", LM_FILES)
    source = _expand(name_or_path)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path, _local_only=local_only)
    with _load_errors("model", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=local_only)
    model.to(dev).eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str, *, _local_only: bool | None = None) -> Any:
    """The tokenizer of a local directory or hub id (AutoTokenizer), failing like load_lm: ModelLoadError."""
    from pc_core.hub import TOKENIZER_FILES, check_source

    if _local_only is None:
        _local_only = check_source(name_or_path, "tokenizer", TOKENIZER_FILES)
    from transformers import AutoTokenizer

    with _load_errors("tokenizer", name_or_path):
        return AutoTokenizer.from_pretrained(_expand(name_or_path), local_files_only=_local_only)


def _expand(name_or_path: str) -> str:
    path = os.path.expanduser(name_or_path)
    return path if os.path.exists(path) else name_or_path


@contextlib.contextmanager
def _load_errors(what: str, name_or_path: str) -> Iterator[None]:
    """transformers' OSError / ValueError (unknown repo, missing files, unreadable config) as one line."""
    from pc_core.errors import ModelLoadError, PcgenError
    from pc_core.hub import first_line

    try:
        yield
    except PcgenError:
        raise
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {what} {name_or_path!r}: {first_line(err)}") from err


def check_pairing(hmm: Any, tokenizer: Any, lm_id: str | None = None, allow_mismatch: bool = False) -> str:
    """Check that `hmm` was distilled for `tokenizer` (and the LM `lm_id`) before they are used together.

    * Vocabulary sizes must agree (always: the guide cannot run otherwise): TokenizerMismatch.
    * The HMM records the fingerprint of the tokenizer it was distilled with (pc_core.constraints.vocab.
      tokenizer_fingerprint): a different one raises TokenizerMismatch naming both, unless `allow_mismatch`
      (then a warning). An HMM without one (imported from Ctrl-G / GeLaTo, or saved by hand) loads with a
      warning that the pairing cannot be checked.
    * A different LM id than the one it was distilled from is a warning (the same tokenizer, another LM:
      allowed, but the guide approximates the LM it was distilled from).

    Returns "match", "unchecked" (no fingerprint recorded) or "mismatch" (allowed)."""
    from pc_core.constraints.vocab import tokenizer_fingerprint
    from pc_core.errors import TokenizerMismatch

    if hmm.vocab_size != len(tokenizer):
        raise TokenizerMismatch(
            f"the HMM has {hmm.vocab_size} tokens but the tokenizer of {lm_id or 'the LM'} has {len(tokenizer)}"
        )
    recorded = hmm.metadata.get("tokenizer_fingerprint")
    distilled_for = hmm.metadata.get("lm")
    if distilled_for and lm_id and not _same_lm(distilled_for, lm_id):
        log.warning("the HMM was distilled from the LM %s but is used with %s", distilled_for, lm_id)
    if not recorded:
        log.warning(
            "the HMM records no tokenizer fingerprint (imported from Ctrl-G / GeLaTo, or saved without one): its "
            "pairing with the tokenizer of %s cannot be checked",
            lm_id or "the LM",
        )
        return "unchecked"
    actual = tokenizer_fingerprint(tokenizer)
    if actual == recorded:
        return "match"
    message = (
        f"the HMM was distilled for tokenizer {recorded}"
        + (f" (LM {distilled_for})" if distilled_for else "")
        + f" but the tokenizer of {lm_id or 'the LM'} is {actual}"
    )
    if not allow_mismatch:
        raise TokenizerMismatch(
            f"{message}; pair it with the LM it was distilled from, or allow the mismatch (allow_mismatch=True, "
            "pcgen generate --allow-tokenizer-mismatch, PCGEN_ALLOW_TOKENIZER_MISMATCH=true)"
        )
    log.warning("%s; loading anyway (tokenizer mismatch allowed)", message)
    return "mismatch"


def _same_lm(a: str, b: str) -> bool:
    """Equal ids, or paths to one directory."""
    if a.rstrip("/") == b.rstrip("/"):
        return True
    pa, pb = (os.path.realpath(os.path.expanduser(x)) for x in (a, b))
    return os.path.exists(pa) and pa == pb


def max_positions(model_or_config: Any) -> int | None:
    """The model's context length from its config: `n_positions` (GPT-2 style) or `max_position_embeddings`
    (Llama, Qwen2, ...); None when the config has neither."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def lm_fingerprint(model: Any) -> str:
    """Name, config and a sample of weights: cheap, and different for different checkpoints."""
    h = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    h.update(model.config.to_json_string().encode())
    for i, p in enumerate(model.parameters()):
        if i >= 4:
            break
        h.update(p.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------- KV cache


@functools.cache
def _forward_parameters(model_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_kwarg(model: Any) -> str:
    """The keyword under which `model`'s forward takes the KV cache: "cache" in current transformers (where
    `past_key_values` is deprecated and warns on every call), "past_key_values" in earlier versions."""
    return "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"


def forward_cached(model: Any, cache: Any = None, **inputs: Any) -> tuple[Any, Any]:
    """model(**inputs, use_cache=True) with `cache` (a transformers Cache, or None to start one) passed
    under the keyword the model expects; returns (model output, the grown cache)."""
    out = model(**inputs, use_cache=True, **{cache_kwarg(model): cache})
    grown = out.get("cache")  # ModelOutput.get: no BC warning, None where the field has its old name
    return out, grown if grown is not None else out.get("past_key_values")


def _cache_layers(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values (N, heads, L, d) of a transformers DynamicCache."""
    layers = cache.layers
    return [lay.keys for lay in layers], [lay.values for lay in layers]


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
        out, grown = forward_cached(
            model,
            cache,
            input_ids=tokens.reshape(-1, 1),
            attention_mask=mask,
            position_ids=self.positions.reshape(-1, 1),
        )
        keys, values = _cache_layers(grown)
        return KVBatch(keys, values, mask, self.positions + 1), out.logits[:, -1].float()

    @classmethod
    @torch.no_grad()
    def prefill(cls, model: Any, prompt_ids: list[int]) -> tuple[KVBatch, torch.Tensor]:
        """Run the prompt (one row); logits for the first generated token (1, V_lm)."""
        device = next(model.parameters()).device
        ids = torch.tensor([prompt_ids], device=device)
        out, cache = forward_cached(model, None, input_ids=ids)
        keys, values = _cache_layers(cache)
        batch = cls(keys, values, torch.ones_like(ids), torch.tensor([len(prompt_ids)], device=device))
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


@torch.no_grad()
def continuation_logprobs(model: Any, rows: list[list[int]], starts: list[int]) -> list[float]:
    """Per row, the sum of the LM's log-probabilities of its tokens from index `starts[i]` on, given the
    tokens before: one forward over the batch, right-padded (padding comes after every scored token, so a
    causal LM's scores do not see it). Used to rank infilling beams by span + suffix (pc_core.infill)."""
    device = next(model.parameters()).device
    length = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long, device=device)  # (N, L)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, device=device)
        mask[i, : len(row)] = 1
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), dim=-1)
    picked = logp.gather(2, ids[:, 1:, None])[:, :, 0]  # (N, L - 1): log p(token j + 1 | tokens .. j)
    out = []
    for i, (row, start) in enumerate(zip(rows, starts)):
        out.append(float(picked[i, max(0, start - 1) : len(row) - 1].sum()))
    return out
