"""`pcgen distill embed`: the hidden states LVD needs, for samples that came without them (server sampling).

One batched forward pass per block of sequences (prefill only, no decoding): the input is the sequence's
start (BOS, else EOS, or its prompt, left-padded) followed by x_1 .. x_{T-1}, and the state of layer
`embedding_layer` at the position before x_t is the state that *predicts* x_t, exactly what
`pcgen distill sample --save-embeddings` stores. bf16 on GPU (`--dtype auto`), fp32 on CPU.

The first `num_sequences` sequences (0: all) get hidden states, shard by shard, written into the sample
directory itself (`embeddings-RRRRR-IIIII.npy`, float16) so `pcgen distill lvd --data` reads them as it reads
sampled ones. Sharded across processes like sampling (torchrun: shard i on rank i % world_size), and
resumable: each rank lists its finished shards in `embed-rank-RRRRR.json`, rank 0 merges them into
`manifest.json` (`embeddings` per shard, `embedding_dim`, and `embed`: the settings); a rerun skips shards
whose hidden states are intact and were made with the same settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill import data, dist
from distill.errors import DistillError
from pc_core.atomic_files import atomic_write_json, remove_stale_temporaries
from pc_core.lm import DTYPES, load_lm

log = logging.getLogger(__name__)


@dataclass
class EmbedConfig:
    lm: str
    data: str
    num_sequences: int = 0  # the first K sequences get hidden states; 0 = all
    batch_size: int = 64  # sequences per forward pass
    embedding_layer: int = -1  # index into hidden_states: 0 = embeddings, -1 = last layer
    device: str = "auto"
    dtype: str = "auto"  # a name in pc_core.lm.DTYPES; auto: bf16 on CUDA, float32 on CPU

    def validate(self) -> None:
        if self.num_sequences < 0 or self.batch_size < 1:
            raise DistillError(f"num_sequences must be >= 0 and batch_size >= 1, got {self.num_sequences}, "
                               f"{self.batch_size}")  # fmt: skip
        if self.dtype not in DTYPES:
            raise DistillError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


def part_file(rank: int) -> str:
    return f"embed-rank-{rank:05d}.json"


@torch.no_grad()
def embed_batch(
    model: Any, starts: list[list[int]], tokens: torch.Tensor, layer: int, pad: int
) -> torch.Tensor:
    """Predicting hidden states (B, T, D) float32 of tokens (B, T) long, each row after its start ids."""
    b, t = tokens.shape
    width = max(len(s) for s in starts)
    ids = torch.full((b, width + t - 1), pad, dtype=torch.long, device=tokens.device)  # left-padded starts
    mask = torch.zeros_like(ids)
    for i, s in enumerate(starts):
        ids[i, width - len(s) : width] = torch.tensor(s, dtype=torch.long, device=tokens.device)
        mask[i, width - len(s) :] = 1
    ids[:, width:] = tokens[:, :-1]
    pos = (mask.cumsum(1) - 1).clamp_min(0)  # absolute positions ignore the left padding
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
    return out.hidden_states[layer][:, width - 1 :].float()  # (B, T, D): position width-1+j predicts x_{j+1}


def _starts(manifest: dict, tokenizer: Any, directory: Path) -> tuple[list[list[int]] | None, int]:
    """The prompts the samples continue (checked against the manifest's sha256), and the unconditional start."""
    import hashlib

    from distill.sample import read_prompts

    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    path = manifest["settings"].get("prompts")
    if not path:
        return None, start
    if not Path(path).exists() or hashlib.sha256(Path(path).read_bytes()).hexdigest() != manifest[
        "settings"
    ].get("prompts_sha256"):
        raise DistillError(f"{directory} was sampled from prompts {path}, which are missing or changed since")
    return read_prompts(path, tokenizer), start


def _settings(cfg: EmbedConfig, total: int) -> dict:
    return {"lm": cfg.lm, "embedding_layer": cfg.embedding_layer, "num_sequences": cfg.num_sequences or total}


def _check(cfg: EmbedConfig, manifest: dict, tokenizer: Any, model: Any) -> int:
    """The hidden width; refuses another tokenizer and hidden states of other settings already there."""
    from pc_core.constraints.vocab import tokenizer_fingerprint

    want, have = manifest.get("tokenizer_fingerprint"), tokenizer_fingerprint(tokenizer)
    if len(tokenizer) != manifest["vocab_size"] or (want and want != have):
        raise DistillError(f"{cfg.data} was sampled with another tokenizer ({want}, {manifest['vocab_size']} "
                           f"tokens) than {cfg.lm}'s ({have}, {len(tokenizer)} tokens)")  # fmt: skip
    text = (
        model.config.get_text_config(decoder=True)
        if hasattr(model.config, "get_text_config")
        else model.config
    )
    layers = text.num_hidden_layers + 1
    if not -layers <= cfg.embedding_layer < layers:
        raise DistillError(f"embedding_layer must be in {-layers}..{layers - 1}, got {cfg.embedding_layer}")
    old = manifest.get("embed")
    new = _settings(cfg, manifest["num_sequences"])
    stored = any(e.get("embeddings") for e in manifest["shards"])
    if (old and old != new) or (stored and not old):
        raise DistillError(f"{cfg.data} already holds hidden states made with other settings ({old or 'sampled'}, "
                           f"not {new}); embed a copy of the samples")  # fmt: skip
    return text.hidden_size


def run_embed(cfg: EmbedConfig) -> dict:
    """Compute this rank's missing hidden states; returns the manifest (merged by rank 0)."""
    cfg.validate()
    ctx = dist.init(cfg.device)
    directory = Path(cfg.data)
    manifest = data._complete_manifest(directory)
    model, tokenizer = load_lm(cfg.lm, device=str(ctx.device), dtype=cfg.dtype)
    dim = _check(cfg, manifest, tokenizer, model)
    prompts, start = _starts(manifest, tokenizer, directory)
    settings = _settings(cfg, manifest["num_sequences"])
    dist.barrier(ctx)
    if ctx.is_main:
        remove_stale_temporaries(directory)
    dist.barrier(ctx)
    own_path = directory / part_file(ctx.rank)
    own = json.loads(own_path.read_text()) if own_path.exists() else []
    began, done = time.perf_counter(), 0
    for entry in sorted(manifest["shards"], key=lambda e: e["index"]):
        keep = min(entry["num_sequences"], settings["num_sequences"] - entry["start"])
        if keep <= 0 or entry["index"] % ctx.world_size != ctx.rank or _finished(directory, entry, own, keep):
            continue
        tokens = np.asarray(data._load_array(directory, entry, (entry["num_sequences"], manifest["seq_len"]),
                                             manifest["token_dtype"], True))[:keep]  # fmt: skip
        hidden = np.empty((keep, manifest["seq_len"], dim), dtype=data.EMBEDDING_DTYPE)
        for b0 in range(0, keep, cfg.batch_size):
            rows = range(entry["start"] + b0, entry["start"] + min(b0 + cfg.batch_size, keep))
            starts = [prompts[i % len(prompts)] for i in rows] if prompts else [[start]] * len(rows)
            x = torch.from_numpy(tokens[b0 : b0 + len(rows)].astype(np.int64)).to(ctx.device)
            hidden[b0 : b0 + len(rows)] = (
                embed_batch(model, starts, x, cfg.embedding_layer, start).cpu().numpy()
            )
        record = _write(directory, ctx.rank, entry["index"], hidden)
        own[:] = [e for e in own if e["index"] != entry["index"]] + [
            {"index": entry["index"], "embeddings": record}
        ]
        atomic_write_json(own_path, own)
        done += keep
        log.info("shard %d: hidden states of %d sequences (%.0f tokens/s) -> %s", entry["index"], keep,
                 done * manifest["seq_len"] / (time.perf_counter() - began), record["file"])  # fmt: skip
        if ctx.is_main:
            merge(directory, settings, dim)
    dist.barrier(ctx)
    if ctx.is_main:
        merge(directory, settings, dim, final=True)
    dist.barrier(ctx)
    return data.read_manifest(directory)


def _finished(directory: Path, entry: dict, own: list[dict], keep: int) -> bool:
    """This shard's hidden states are listed (manifest or part file), intact and cover `keep` rows."""
    records = [e["embeddings"] for e in own if e["index"] == entry["index"]] + [entry.get("embeddings")]
    for record in records:
        if record and record["num_sequences"] == keep and data.shard_is_intact(directory, {**record}):
            log.info("shard %d: hidden states finished earlier, skipping", entry["index"])
            return True
    return False


def _write(directory: Path, rank: int, index: int, hidden: np.ndarray) -> dict:
    name = data.shard_file("embeddings", rank, index)
    return {
        "file": name,
        "num_sequences": int(hidden.shape[0]),
        "dim": int(hidden.shape[2]),
        "dtype": data.EMBEDDING_DTYPE,
        "sha256": data.atomic_save_npy(directory / name, hidden),
    }


def merge(directory: Path, settings: dict, dim: int, final: bool = False) -> dict:
    """Rank 0: the part files' records into manifest.json; `final` also removes the part files."""
    manifest = data.read_manifest(directory)
    records = {}
    for part in sorted(directory.glob("embed-rank-*.json")):
        records.update({e["index"]: e["embeddings"] for e in json.loads(part.read_text())})
    for entry in manifest["shards"]:
        if entry["index"] in records:
            entry["embeddings"] = records[entry["index"]]
    manifest["embedding_dim"], manifest["embed"] = dim, settings
    atomic_write_json(directory / data.MANIFEST, manifest)
    if final:
        for part in directory.glob("embed-rank-*.json"):
            part.unlink(missing_ok=True)
    return manifest
