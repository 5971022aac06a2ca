"""Stage 1: ancestral samples from a causal LM (method notes, section 6.1), sharded and resumable.

Plain sampling: temperature 1, the full vocabulary, no top-k/top-p. A manual decoding loop over the model's
KV cache (one forward per position for the whole batch). Randomness is one uniform per (sequence, position)
drawn up front from the shard's seed and turned into a token by inverting the CDF, so a shard is a pure
function of (model, seed, shard index) on a given device: rerunning reproduces it, and batch size or
process count do not change which random number a sequence uses. Sequences that emit EOS are padded with
EOS up to seq_len. Prompts (one per line) are cycled over the global sequence index; only the sampled
continuation is stored.

`save_embeddings` K also stores, for the first K sequences, the hidden state (layer `embedding_layer`) that
*predicts* each token: the state at the position before it, i.e. the last prompt position for x_1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill import data, dist
from distill.errors import DistillError

log = logging.getLogger("distill.sample")


@dataclass
class SampleConfig:
    lm: str
    out: str
    num_sequences: int
    seq_len: int = 32
    batch_size: int = 64
    shard_size: int = 65536
    seed: int = 0
    prompts: str | None = None
    save_embeddings: int = 0  # store hidden states for the first K sequences (LVD needs them)
    embedding_layer: int = -1  # index into the model's hidden_states: 0 = embeddings, -1 = last layer
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 on CUDA (float16 without bf16 support), float32 on CPU

    def validate(self) -> None:
        for name in ("num_sequences", "seq_len", "batch_size", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise DistillError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_embeddings < 0:
            raise DistillError(f"save_embeddings must be >= 0, got {self.save_embeddings}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise DistillError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")


# settings that change the samples: a resume must use the same ones
IDENTITY = ("seed", "prompts_sha256", "save_embeddings", "embedding_layer")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


def read_prompts(path: str, tokenizer: object) -> list[list[int]]:
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DistillError(f"{path}: no prompts (expected one per line)")
    return [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]


@torch.no_grad()
def sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    uniforms: torch.Tensor,
    vocab_size: int,
    eos_token_id: int | None,
    pad_token_id: int,
    hidden_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample len(prompts) continuations of uniforms.shape[1] tokens.

    uniforms (B, T) in [0, 1) on the model's device. Returns tokens (B, T) long and, when hidden_layer is
    given, the predicting hidden states (B, T, D) float32.
    """
    device = uniforms.device
    b, t_len = uniforms.shape
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_token_id, dtype=torch.long, device=device)  # left-padded prompts
    mask = torch.zeros((b, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long, device=device)
        mask[i, width - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp_min(0)  # GPT-style absolute positions ignore the left padding
    tokens = torch.full((b, t_len), eos_token_id if eos_token_id is not None else 0, dtype=torch.long)
    tokens = tokens.to(device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    hidden = None
    past, inp = None, ids
    for t in range(t_len):
        out = model(
            input_ids=inp,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=past,
            use_cache=True,
            output_hidden_states=hidden_layer is not None,
        )
        past = out.past_key_values
        if hidden_layer is not None:
            state = out.hidden_states[hidden_layer][:, -1].float()  # (B, D): the state that predicts x_t
            if hidden is None:
                hidden = torch.zeros((b, t_len, state.shape[1]), device=device)
            hidden[:, t] = state
        # tokens past the tokenizer (padded LM heads) cannot be decoded: sample only the real vocabulary
        cdf = torch.softmax(out.logits[:, -1, :vocab_size].float(), dim=-1).cumsum(-1)  # (B, V)
        total = cdf[:, -1:]
        r = torch.minimum(
            uniforms[:, t : t + 1].float() * total, torch.nextafter(total, torch.zeros_like(total))
        )
        x = torch.searchsorted(cdf, r, right=True).squeeze(1)  # first index with cdf > r: p(x) > 0
        if eos_token_id is not None:
            x = torch.where(done, eos_token_id, x)
            done |= x == eos_token_id
        tokens[:, t] = x
        if eos_token_id is not None and bool(done.all()):
            break  # the rest is EOS padding (hidden states stay 0; LVD gives those positions the end state)
        inp = x[:, None]
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], 1)
        pos = pos[:, -1:] + 1
    return tokens, hidden


def _check_resume(out: Path, header: dict) -> None:
    if not (out / data.MANIFEST).exists():
        return
    old = data.read_manifest(out)
    if old["vocab_size"] != header["vocab_size"] or (
        old.get("tokenizer_fingerprint")
        and header.get("tokenizer_fingerprint")
        and old["tokenizer_fingerprint"] != header["tokenizer_fingerprint"]
    ):
        raise DistillError(
            f"vocabulary mismatch: {out} holds samples over a vocabulary of {old['vocab_size']} tokens "
            f"(tokenizer {old.get('tokenizer_fingerprint')}) but {header['lm']} has {header['vocab_size']} "
            f"(tokenizer {header.get('tokenizer_fingerprint')}); use a new --out"
        )
    diffs = [
        f"{key} {header[key]} (was {old.get(key)})"
        for key in ("seq_len", "num_sequences", "shard_size")
        if old.get(key) != header[key]
    ]
    diffs += [
        f"{key} {header['settings'].get(key)} (was {old['settings'].get(key)})"
        for key in IDENTITY
        if old["settings"].get(key) != header["settings"].get(key)
    ]
    if diffs:
        raise DistillError(
            f"{out} holds samples made with other settings: {', '.join(diffs)}; use a new --out"
        )


def run_sample(cfg: SampleConfig) -> dict:
    """Sample this rank's unfinished shards; returns the manifest (complete once every rank is done)."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pc_core.constraints.vocab import tokenizer_fingerprint

    cfg.validate()
    ctx = dist.init(cfg.device)
    out = Path(cfg.out)
    tokenizer = AutoTokenizer.from_pretrained(cfg.lm)
    vocab_size, eos = len(tokenizer), tokenizer.eos_token_id
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    prompts = read_prompts(cfg.prompts, tokenizer) if cfg.prompts else None
    if prompts is None and start_id is None:
        raise DistillError(f"{cfg.lm} has no BOS or EOS token to start unconditional samples; give --prompts")
    prompts_sha = hashlib.sha256(Path(cfg.prompts).read_bytes()).hexdigest() if cfg.prompts else None
    settings = {
        "seed": cfg.seed,
        "prompts": cfg.prompts,
        "prompts_sha256": prompts_sha,
        "save_embeddings": cfg.save_embeddings,
        "embedding_layer": cfg.embedding_layer if cfg.save_embeddings else None,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
    }
    model = AutoModelForCausalLM.from_pretrained(cfg.lm)
    if model.config.vocab_size < vocab_size:
        raise DistillError(
            f"vocabulary mismatch: the tokenizer of {cfg.lm} has {vocab_size} tokens, the LM head only "
            f"{model.config.vocab_size}"
        )
    model = model.to(device=ctx.device, dtype=_dtype(cfg.dtype, ctx.device)).eval()
    hidden_dim = None
    if cfg.save_embeddings:
        layers = model.config.num_hidden_layers + 1
        if not -layers <= cfg.embedding_layer < layers:
            raise DistillError(
                f"embedding_layer must be in {-layers}..{layers - 1}, got {cfg.embedding_layer}"
            )
        hidden_dim = model.config.hidden_size
    header = data.new_header(
        lm=cfg.lm,
        vocab_size=vocab_size,
        eos_token_id=eos,
        seq_len=cfg.seq_len,
        num_sequences=cfg.num_sequences,
        shard_size=cfg.shard_size,
        settings=settings,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        embedding_dim=hidden_dim,
    )
    _check_resume(out, header)
    dist.barrier(ctx)  # every rank has validated before rank 0 touches the directory
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        data.remove_stale_temporaries(out)
        data.merge_manifest(out, header)
    dist.barrier(ctx)

    finished = data.finished_shards(out)
    own_path = out / data.part_file(ctx.rank)
    own = json.loads(own_path.read_text()) if own_path.exists() else []
    mine = [s for s in data.plan(cfg.num_sequences, cfg.shard_size) if s[0] % ctx.world_size == ctx.rank]
    todo = []
    for index, start, count in mine:
        entry = finished.get(index)
        if entry is not None and data.shard_is_intact(out, entry):
            log.info("shard %d: finished earlier, skipping", index)
        else:
            if entry is not None:
                log.warning("shard %d: files missing or modified, sampling it again", index)
            todo.append((index, start, count))
    bar = tqdm(
        total=sum(c for _, _, c in todo),
        unit="seq",
        desc=f"sample rank {ctx.rank}",
        disable=None,
        position=ctx.rank,
    )
    for index, start, count in todo:
        began = time.perf_counter()
        seed = data.shard_seed(cfg.seed, index)
        gen = torch.Generator().manual_seed(seed)
        uniforms = torch.rand((count, cfg.seq_len), generator=gen, dtype=torch.float64)  # (n, T) on CPU
        keep = min(max(cfg.save_embeddings - start, 0), count)  # rows of this shard that keep hidden states
        tokens = np.empty((count, cfg.seq_len), dtype=data.token_dtype(vocab_size))
        hidden = np.empty((keep, cfg.seq_len, hidden_dim or 0), dtype=data.EMBEDDING_DTYPE)
        for b0 in range(0, count, cfg.batch_size):
            b1 = min(b0 + cfg.batch_size, count)
            batch_prompts = (
                [prompts[(start + j) % len(prompts)] for j in range(b0, b1)]
                if prompts
                else [[start_id]] * (b1 - b0)
            )
            want = cfg.embedding_layer if b0 < keep else None
            x, h = sample_batch(
                model,
                batch_prompts,
                uniforms[b0:b1].to(ctx.device),
                vocab_size,
                eos,
                pad_token_id=start_id if start_id is not None else 0,
                hidden_layer=want,
            )
            tokens[b0:b1] = x.cpu().numpy()
            if want is not None:
                rows = min(b1, keep) - b0
                hidden[b0 : b0 + rows] = h[:rows].cpu().numpy()
            bar.update(b1 - b0)
        entry = data.write_shard(out, ctx.rank, index, start, seed, tokens, hidden if keep else None)
        data.record_shard(out, ctx.rank, entry, own)
        if ctx.is_main:
            data.merge_manifest(out, header)
        elapsed = time.perf_counter() - began
        log.info(
            "shard %d: %d sequences, %.0f tokens/s, seed %d -> %s",
            index,
            count,
            count * cfg.seq_len / elapsed,
            seed,
            entry["file"],
        )
    bar.close()
    dist.barrier(ctx)
    if ctx.is_main:
        data.merge_manifest(out, header, final=True)
    dist.barrier(ctx)
    manifest = data.read_manifest(out)
    log.info("%s: %d of %d shards finished", out, len(manifest["shards"]), manifest["num_shards"])
    return manifest
