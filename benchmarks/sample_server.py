"""Sampling throughput of `pcgen distill sample`: the local sampler against one and two `pcgen serve` processes.

    python -m benchmarks.sample_server [--sequences 96] [--seq-len 32] [--concurrency 1 8 32]

The same LM everywhere: by default the tests' tiny random GPT-2 (2 layers, d = 32, V = 643; built here), or
--lm/--hmm. The local row is the stage itself (`distill.sample.run_sample`, batch 64, KV-cached loop); the
server rows are the same stage with `server=` (`distill.sample_server`: one seeded completion request per
sequence, `concurrency` in flight over the fleet) against `pcgen serve` processes on loopback (response cache
off, continuous batching on), each a fresh output directory. "sampling" is the rate the stage logs for its
shard (local: every position of the batch loop; servers: the returned tokens), without loading the LM or
probing the servers; "whole stage" is the sampled tokens (up to and including EOS) over run_sample's wall
time, setup included; "per sequence" is tokens / request latency as the client saw it, i.e. the decoding rate
one sequence gets from the server.
Every process shares the machine's cores. Writes docs/benchmarks.md ("sample-server").
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._report import command, machine, table, write_section
from benchmarks.serve import build_tiny_models, start_server, stop_servers
from distill import data
from distill.sample import SampleConfig, run_sample


def sampled_tokens(directory: Path) -> int:
    """Tokens up to and including each sequence's first EOS (the padding after it is not sampled)."""
    tokens, manifest = data.load_tokens(directory)
    eos = manifest["eos_token_id"]
    is_eos = tokens == eos
    first = np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1])
    return int(first.sum())


class ShardRates(logging.Handler):
    """The tokens/s each stage logs per shard ("shard %d: %d sequences, %.0f tokens/s ..."): the sampling
    alone, without loading the LM or probing the servers."""

    def __init__(self) -> None:
        super().__init__()
        self.rates: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("shard %d: %d sequences, %.0f tokens/s"):
            self.rates.append(float(record.args[2]))


def measure(cfg: SampleConfig) -> tuple[float, float, float | None]:
    """(tokens/s of sampling, tokens/s of the whole stage, tokens/s per sequence on the servers or None)."""
    handler = ShardRates()
    for name in ("distill.sample", "distill.sample_server"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    began = time.perf_counter()
    try:
        manifest = run_sample(cfg)
    finally:
        for name in ("distill.sample", "distill.sample_server"):
            logging.getLogger(name).removeHandler(handler)
    seconds = time.perf_counter() - began
    stats = manifest.get("server_stats") or {}
    rates = [(s["tokens"], s["tokens_per_s_per_sequence"]) for s in stats.values() if s["tokens"]]
    per_sequence = sum(t for t, _ in rates) / sum(t / r for t, r in rates) if rates else None
    (rate,) = handler.rates  # one shard per run
    return rate, sampled_tokens(Path(cfg.out)) / seconds, per_sequence


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sample_server")
    parser.add_argument(
        "--sequences", type=int, default=96, help="sequences per row (a third at concurrency 1)"
    )
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--lm", help="LM directory (default: the tests' tiny GPT-2, built here)")
    parser.add_argument("--hmm", help="HMM directory the servers load (default: a random H=16 HMM)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        lm, hmm = (args.lm, args.hmm) if args.lm else build_tiny_models(tmp_path)
        env = {**__import__("os").environ, "PCGEN_LM": lm, "PCGEN_HMM": hmm, "PCGEN_DEVICE": "cpu",
               "PCGEN_MAX_NEW_TOKENS": str(args.seq_len), "HF_HUB_OFFLINE": "1"}  # fmt: skip
        runs = iter(range(10_000))
        sizes = dict(lm=lm, seq_len=args.seq_len, shard_size=1 << 16, device="cpu")

        def cfg(n: int, **kw: object) -> SampleConfig:
            return SampleConfig(out=str(tmp_path / f"run-{next(runs)}"), num_sequences=n, **sizes, **kw)

        rows = []
        tps, stage, _ = measure(cfg(args.sequences, batch_size=64))
        rows.append(["local sampler (batch 64)", "-", round(tps), round(stage), "-"])
        print(rows[-1], flush=True)
        procs, urls = [], []
        try:
            for i in range(2):
                proc, url = start_server(env, batching=True, log=tmp_path / f"server-{i}.log")
                procs.append(proc), urls.append(url)
            for c in args.concurrency:
                n = args.sequences if c > 1 else max(8, args.sequences // 3)
                for k in (1, 2):
                    tps, stage, per_seq = measure(cfg(n, server=",".join(urls[:k]), concurrency=c))
                    rows.append([f"{k} pcgen serve", c, round(tps), round(stage), round(per_seq)])
                    print(rows[-1], flush=True)
        finally:
            stop_servers(procs)
    headers = [
        "sampler",
        "concurrency",
        "tokens/s sampling",
        "tokens/s whole stage",
        "tokens/s per sequence (server)",
    ]
    source = f"LM {args.lm}" if args.lm else "the tests' tiny random GPT-2 (2 layers, d = 32, V = 643)"
    body = (
        "## Sampling through servers (distill.sample_server)\n\n"
        f"`{command()}`; {source}; T = {args.seq_len}, {args.sequences} sequences per row "
        f"({max(8, args.sequences // 3)} at concurrency 1). {machine()}; the servers and the client share "
        "these cores.\n\n" + table(headers, rows)
    )
    print(body)
    print(json.dumps(rows))
    write_section("benchmarks.md", "sample-server", body)


if __name__ == "__main__":
    main()
