"""Stage 1 through inference servers: `pcgen distill sample --server URL[,URL...]` (distill/remote.py talks
to them). Same directory layout, sharding, manifest and resume as the local sampler (distill/sample.py).

Global sequence i is one completion request (prompt: BOS, else EOS, or prompt i of --prompts as token ids;
`max_tokens` = seq_len; `seed` derived from (seed, i), so a deterministic server reproduces a resumed shard).
Up to `concurrency` requests are in flight over the whole run, across shard boundaries; a shard is written
once every one of its rows has an answer, so a sequence is stored exactly once however many servers fail
and retry. The stored sequence is cut after its first EOS and EOS-padded to seq_len, as locally; a
completion that stops ("stop") without an EOS ended on another stop token of the server's and is padded the
same way. Hidden states for LVD come afterwards from `pcgen distill embed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distill import data, dist
from distill.errors import DistillError
from distill.remote import OFF_EXTRAS, SAMPLING, Fleet, public_url

log = logging.getLogger(__name__)


def sequence_seed(seed: int, index: int) -> int:
    """A 31-bit request seed per global sequence (every server takes a seed of that size)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1, np.uint32)[0] >> 1)


def server_urls(listing: str) -> list[str]:
    """The URLs of a comma-separated --server value, blanks dropped."""
    return [u for u in (part.strip() for part in listing.split(",")) if u]


def api_key(cfg: Any) -> str | None:
    """--api-key, else $PCGEN_DISTILL_API_KEY, else $OPENAI_API_KEY (never written to the manifest)."""
    return cfg.api_key or os.environ.get("PCGEN_DISTILL_API_KEY") or os.environ.get("OPENAI_API_KEY")


@dataclass
class _Shard:
    index: int
    start: int
    tokens: np.ndarray  # (n, T), filled row by row
    left: int
    began: float
    servers: dict[str, int] = field(default_factory=dict)


def server_settings(cfg: Any, fleet: Fleet) -> dict:
    """What the manifest records about the servers (no credentials)."""
    extras = {s.url: s.extras for s in fleet.servers}
    return {
        "source": "server",
        "servers": [public_url(s.url) for s in fleet.servers],
        "model": fleet.model,
        "sampling": {
            **SAMPLING,
            "n": 1,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
            "seeded": True,
            "vllm_off": OFF_EXTRAS,
        },  # fmt: skip
        "sampling_extras_sent": {public_url(u): sent for u, sent in extras.items()},
        "tokenizer_checks": {public_url(s.url): s.check for s in fleet.servers},
        "concurrency": cfg.concurrency,
    }


def fleet_stats(fleet: Fleet) -> dict:
    """Per server: sequences and tokens it sampled in this invocation, and the tokens per second one request
    saw (tokens / request latency, averaged over requests: the decoding rate a single sequence gets)."""
    stats = {}
    for s in fleet.servers:
        rate = s.tokens / s.seconds if s.seconds else None
        stats[public_url(s.url)] = {
            "sequences": s.sequences,
            "tokens": s.tokens,
            "tokens_per_s_per_sequence": rate,
        }
        log.info("server %s: %d sequences, %d tokens, %s tokens/s per sequence", s.name, s.sequences, s.tokens,
                 f"{rate:.1f}" if rate else "-")  # fmt: skip
    return stats


def open_fleet(cfg: Any) -> Fleet:
    return Fleet(server_urls(cfg.server), api_key(cfg), cfg.model, cfg.request_timeout, cfg.max_retries)


def sample_shards(run: Any, fleet: Fleet, todo: list[tuple[int, int, int]], bar: Any) -> None:
    """Sample every row of the shards in `todo` through the fleet; each shard is written when complete."""
    asyncio.run(_sample_all(run, fleet, todo, bar))


async def _sample_all(run: Any, fleet: Fleet, todo: list[tuple[int, int, int]], bar: Any) -> None:
    cfg = run.cfg
    dtype = data.token_dtype(run.vocab_size)
    shards: dict[int, _Shard] = {}

    def jobs() -> Any:  # (shard, row) in order; a shard's buffer exists only once its first row is taken
        for index, start, count in todo:
            shards[index] = _Shard(
                index, start, np.empty((count, cfg.seq_len), dtype), count, time.perf_counter()
            )
            for row in range(count):
                yield shards[index], row

    queue = jobs()
    began, generated = time.perf_counter(), [0]

    async def worker() -> None:
        for shard, row in queue:  # one shared generator: each (shard, row) is taken by exactly one worker
            prompt = run.batch_prompts(shard.start, row, row + 1)[0]
            ids, finish, server = await fleet.sample(
                prompt, cfg.seq_len, sequence_seed(cfg.seed, shard.start + row)
            )
            shard.tokens[row] = _pad(ids, finish, cfg.seq_len, run, server.name)
            shard.servers[public_url(server.url)] = shard.servers.get(public_url(server.url), 0) + 1
            generated[0] += len(ids)
            shard.left -= 1
            bar.update(1)
            bar.set_postfix_str(f"{generated[0] / (time.perf_counter() - began):.0f} tokens/s", refresh=False)
            if shard.left == 0:
                _write(run, shard)
                del shards[shard.index]

    async with fleet:
        await asyncio.gather(*(worker() for _ in range(cfg.concurrency)))


def _pad(ids: list[int], finish: str, seq_len: int, run: Any, server: str) -> np.ndarray:
    """(T,) the sequence cut after its first EOS and EOS-padded; checks the ids against the vocabulary."""
    eos = run.eos
    if len(ids) > seq_len or any(not 0 <= t < run.vocab_size for t in ids):
        raise DistillError(
            f"server {server} returned {len(ids)} tokens (asked for {seq_len}) or ids outside the local "
            f"vocabulary of {run.vocab_size}: {ids[:16]}"
        )
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    elif len(ids) < seq_len and finish != "stop":
        raise DistillError(
            f"server {server} returned {len(ids)} of {seq_len} tokens without stopping "
            f"(finish_reason {finish!r}); does it cap max_tokens below --seq-len?"
        )
    elif len(ids) < seq_len and eos is None:
        raise DistillError(
            f"server {server} stopped after {len(ids)} tokens but the tokenizer has no EOS to pad"
        )
    out = np.full(seq_len, eos if eos is not None else 0, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def _write(run: Any, shard: _Shard) -> None:
    entry = data.write_shard(run.out, run.ctx.rank, shard.index, shard.start, run.cfg.seed, shard.tokens)
    entry["seed_scheme"] = "per-sequence request seeds (distill.sample_server.sequence_seed)"
    entry["servers"] = dict(sorted(shard.servers.items()))
    data.record_shard(run.out, run.ctx.rank, entry, run.own)
    if run.ctx.is_main:
        data.merge_manifest(run.out, run.header)
    seconds = time.perf_counter() - shard.began
    real = int((shard.tokens != run.eos).sum()) if run.eos is not None else shard.tokens.size
    log.info("shard %d: %d sequences, %.0f tokens/s (%d non-EOS tokens), servers %s -> %s", shard.index,
             len(shard.tokens), real / seconds, real, entry["servers"], entry["file"])  # fmt: skip


def check_settings(cfg: Any) -> None:
    if cfg.save_embeddings:
        raise DistillError(
            "save_embeddings: a server does not return hidden states; sample without it and run "
            "`pcgen distill embed` on the samples (batched forward passes with the local LM)"
        )
    if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.request_timeout <= 0:
        raise DistillError("concurrency must be >= 1, max_retries >= 0 and request_timeout > 0")
    if not server_urls(cfg.server):
        raise DistillError(f"server: no URL in {cfg.server!r}")


def ctx_for_server(cfg: Any) -> dist.Context:
    """Server sampling needs no accelerator here: ranks (if torchrun started several) split the shards."""
    return dist.init("cpu")
