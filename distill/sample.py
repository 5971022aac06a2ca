"""Stage 1: ancestral samples from a causal LM (docs/method.md §8.1), sharded and resumable.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import data, dist
from distill.errors import DistillError
from pc_core.atomic_files import remove_stale_temporaries
from pc_core.lm import DTYPES, forward_cached, load_lm

log = logging.getLogger(__name__)


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
    dtype: str = "auto"  # a name in pc_core.lm.DTYPES; auto: bf16 on CUDA (else fp16), float32 on CPU
    # sampling through OpenAI-compatible servers instead of the local LM (distill/sample_server.py)
    server: str | None = None  # comma-separated base URLs; the local --lm then only gives the tokenizer
    api_key: str | None = None  # else $PCGEN_DISTILL_API_KEY or $OPENAI_API_KEY; never recorded
    model: str | None = None  # the served model name; default: the first of the first server's /v1/models
    concurrency: int = 8  # requests in flight over all servers
    max_retries: int = 8  # failures of one request (5xx, dropped connection; 429s wait) before giving up
    request_timeout: float = 600.0  # seconds per request

    def validate(self) -> None:
        for name in ("num_sequences", "seq_len", "batch_size", "shard_size"):
            if int(getattr(self, name)) < 1:
                raise DistillError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_embeddings < 0:
            raise DistillError(f"save_embeddings must be >= 0, got {self.save_embeddings}")
        if self.dtype not in DTYPES:
            raise DistillError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.server:
            from distill.sample_server import check_settings

            check_settings(self)


# settings that change the samples: a resume must use the same ones (the servers may change: a fleet does)
IDENTITY = ("seed", "prompts_sha256", "save_embeddings", "embedding_layer", "source", "model", "sampling")


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
        out, past = forward_cached(
            model,
            past,
            input_ids=inp,
            attention_mask=mask,
            position_ids=pos,
            output_hidden_states=hidden_layer is not None,
        )
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


@dataclass
class _Run:
    """One rank's sampling run, set up once: the LM, the prompts and the manifest header."""

    cfg: SampleConfig
    ctx: dist.Context
    out: Path
    model: Any
    vocab_size: int
    eos: int | None
    start_id: int | None  # the token unconditional samples start from (BOS, else EOS)
    prompts: list[list[int]] | None
    hidden_dim: int | None  # set when hidden states are stored
    header: dict
    own: list[dict] = field(default_factory=list)  # this rank's part-file entries

    def batch_prompts(self, start: int, b0: int, b1: int) -> list[list[int]]:
        """Prompts of the shard rows b0..b1 (the shard starts at global sequence `start`), cycled."""
        if self.prompts:
            return [self.prompts[(start + j) % len(self.prompts)] for j in range(b0, b1)]
        return [[self.start_id]] * (b1 - b0)


def run_sample(cfg: SampleConfig) -> dict:
    """Sample this rank's unfinished shards; returns the manifest (complete once every rank is done)."""
    from tqdm import tqdm

    cfg.validate()
    if cfg.server:
        return _run_server_sample(cfg)
    ctx = dist.init(cfg.device)
    run = _setup(cfg, ctx)
    _open_output(run)
    todo = _unfinished_shards(run)
    bar = tqdm(
        total=sum(c for _, _, c in todo),
        unit="seq",
        desc=f"sample rank {ctx.rank}",
        disable=None,
        position=ctx.rank,
    )
    for shard in todo:
        _sample_shard(run, *shard, bar)
    bar.close()
    return _finish(run)


def _run_server_sample(cfg: SampleConfig) -> dict:
    """The same stage through inference servers: the local LM directory gives only the tokenizer."""
    import asyncio

    from tqdm import tqdm

    from distill import sample_server
    from pc_core.lm import load_tokenizer

    ctx = sample_server.ctx_for_server(cfg)
    tokenizer = load_tokenizer(cfg.lm)
    fleet = sample_server.open_fleet(cfg)
    run = _setup(cfg, ctx, tokenizer=tokenizer)

    async def prepare() -> None:
        async with fleet:
            await fleet.prepare(tokenizer, run.batch_prompts(0, 0, 1)[0], cfg.seq_len)

    asyncio.run(prepare())
    run.header["settings"].update(sample_server.server_settings(cfg, fleet))
    _open_output(run)
    todo = _unfinished_shards(run)
    total = sum(c for _, _, c in todo)
    bar = tqdm(total=total, unit="seq", desc=f"sample via {len(fleet.servers)} server(s)", disable=None)
    sample_server.sample_shards(run, fleet, todo, bar)
    bar.close()
    run.header["server_stats"] = sample_server.fleet_stats(fleet)  # this invocation's, not the resumed ones'
    return _finish(run)


def _setup(cfg: SampleConfig, ctx: dist.Context, tokenizer: Any = None) -> _Run:
    """Load the LM and its tokenizer (only the tokenizer when one is given: server sampling), read the
    prompts, check the settings against the model."""
    from pc_core.constraints.vocab import tokenizer_fingerprint

    if tokenizer is None:
        model, tokenizer = load_lm(cfg.lm, device=str(ctx.device), dtype=cfg.dtype)
    else:
        model = None
    vocab_size, eos = len(tokenizer), tokenizer.eos_token_id
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    prompts = read_prompts(cfg.prompts, tokenizer) if cfg.prompts else None
    if prompts is None and start_id is None:
        raise DistillError(f"{cfg.lm} has no BOS or EOS token to start unconditional samples; give --prompts")
    if model is not None and model.config.vocab_size < vocab_size:
        raise DistillError(
            f"vocabulary mismatch: the tokenizer of {cfg.lm} has {vocab_size} tokens, the LM head only "
            f"{model.config.vocab_size}"
        )
    hidden_dim = _hidden_dim(cfg, model.config) if model is not None else None
    header = data.new_header(
        lm=cfg.lm,
        vocab_size=vocab_size,
        eos_token_id=eos,
        seq_len=cfg.seq_len,
        num_sequences=cfg.num_sequences,
        shard_size=cfg.shard_size,
        settings=_settings(cfg),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        embedding_dim=hidden_dim,
    )
    return _Run(cfg, ctx, Path(cfg.out), model, vocab_size, eos, start_id, prompts, hidden_dim, header)


def _settings(cfg: SampleConfig) -> dict:
    """The manifest's record of the settings (IDENTITY names those a resume must keep)."""
    prompts_sha = hashlib.sha256(Path(cfg.prompts).read_bytes()).hexdigest() if cfg.prompts else None
    return {
        "seed": cfg.seed,
        "prompts": cfg.prompts,
        "prompts_sha256": prompts_sha,
        "save_embeddings": cfg.save_embeddings,
        "embedding_layer": cfg.embedding_layer if cfg.save_embeddings else None,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "source": None,  # "server" for server sampling, with the servers, model and sampling parameters
        "model": None,
        "sampling": None,
    }


def _hidden_dim(cfg: SampleConfig, config: Any) -> int | None:
    """The width of the stored hidden states (None when none are stored), checking embedding_layer."""
    if not cfg.save_embeddings:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers + 1
    if not -layers <= cfg.embedding_layer < layers:
        raise DistillError(f"embedding_layer must be in {-layers}..{layers - 1}, got {cfg.embedding_layer}")
    return text.hidden_size


def _open_output(run: _Run) -> None:
    """Refuse a directory sampled with other settings; rank 0 creates it, removes temporaries a kill left
    and writes the header; every rank then reads its own part file."""
    _check_resume(run.out, run.header)
    dist.barrier(run.ctx)  # every rank has validated before rank 0 touches the directory
    if run.ctx.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run.out)
        data.merge_manifest(run.out, run.header)
    dist.barrier(run.ctx)
    own_path = run.out / data.part_file(run.ctx.rank)
    run.own = json.loads(own_path.read_text()) if own_path.exists() else []


def _unfinished_shards(run: _Run) -> list[tuple[int, int, int]]:
    """(index, start, count) of this rank's shards that are not finished and intact."""
    finished = data.finished_shards(run.out)
    ctx = run.ctx
    todo = []
    for index, start, count in data.plan(run.cfg.num_sequences, run.cfg.shard_size):
        if index % ctx.world_size != ctx.rank:
            continue
        entry = finished.get(index)
        if entry is not None and data.shard_is_intact(run.out, entry):
            log.info("shard %d: finished earlier, skipping", index)
        else:
            if entry is not None:
                log.warning("shard %d: files missing or modified, sampling it again", index)
            todo.append((index, start, count))
    return todo


def _sample_shard(run: _Run, index: int, start: int, count: int, bar: Any) -> None:
    """Sample one shard batch by batch, write its files and record it."""
    cfg, ctx = run.cfg, run.ctx
    began = time.perf_counter()
    seed = data.shard_seed(cfg.seed, index)
    gen = torch.Generator().manual_seed(seed)
    uniforms = torch.rand((count, cfg.seq_len), generator=gen, dtype=torch.float64)  # (n, T) on CPU
    keep = min(max(cfg.save_embeddings - start, 0), count)  # rows of this shard that keep hidden states
    tokens = np.empty((count, cfg.seq_len), dtype=data.token_dtype(run.vocab_size))
    hidden = np.empty((keep, cfg.seq_len, run.hidden_dim or 0), dtype=data.EMBEDDING_DTYPE)
    for b0 in range(0, count, cfg.batch_size):
        b1 = min(b0 + cfg.batch_size, count)
        want = cfg.embedding_layer if b0 < keep else None
        x, h = sample_batch(
            run.model,
            run.batch_prompts(start, b0, b1),
            uniforms[b0:b1].to(ctx.device),
            run.vocab_size,
            run.eos,
            pad_token_id=run.start_id if run.start_id is not None else 0,
            hidden_layer=want,
        )
        tokens[b0:b1] = x.cpu().numpy()
        if want is not None:
            rows = min(b1, keep) - b0
            hidden[b0 : b0 + rows] = h[:rows].cpu().numpy()
        bar.update(b1 - b0)
    entry = data.write_shard(run.out, ctx.rank, index, start, seed, tokens, hidden if keep else None)
    data.record_shard(run.out, ctx.rank, entry, run.own)
    if ctx.is_main:
        data.merge_manifest(run.out, run.header)
    elapsed = time.perf_counter() - began
    rate = count * cfg.seq_len / elapsed
    log.info("shard %d: %d sequences, %.0f tokens/s, seed %d -> %s", index, count, rate, seed, entry["file"])


def _finish(run: _Run) -> dict:
    """Once every rank is done, rank 0 writes the final manifest; every rank returns it."""
    dist.barrier(run.ctx)
    if run.ctx.is_main:
        data.merge_manifest(run.out, run.header, final=True)
    dist.barrier(run.ctx)
    manifest = data.read_manifest(run.out)
    log.info("%s: %d of %d shards finished", run.out, len(manifest["shards"]), manifest["num_shards"])
    return manifest
