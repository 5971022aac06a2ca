"""The REST service under load: throughput and p50/p95 latency at concurrency 1, 4 and 16, with continuous
batching on and off, in one run.

    python -m benchmarks.serve [--lm PATH --hmm PATH] [--concurrency 1 4 16] [--tokens 16] [--beams 2]

Each mode runs its own `pcgen serve` subprocess on loopback (response cache off, so every request is decoded;
`--no-batching` for "off"); both run side by side and every level alternates between them, for a few rounds, so
load from elsewhere on the machine affects both modes alike. Clients are closed loops: `c` workers each send their next request when the previous
one answers. Every request has its own keyword constraint (two words, never repeated in the run), so constraint
compilation and guide precompute are part of the measured latency. Without --lm/--hmm a tiny random GPT-2 over
a 700-token BPE and a random H=16 HMM are built (what the tests use): the numbers then measure the service and
the scheduler, not a production model. Writes docs/benchmarks.md ("serve").
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks._report import ROOT, machine, table, write_section

WORDS = ["dog", "frisbee", "catch", "coffee", "garden", "snow", "winter", "children", "lake", "house", "night",
         "team", "tree", "girl", "fish", "field", "sky", "stove", "city", "park", "couch", "cat", "pan", "jump",
         "early", "brown", "lazy", "bird", "book", "rain", "boy", "game", "fans", "roof", "friend", "work"]  # fmt: skip


def build_tiny_models(directory: Path) -> tuple[str, str]:
    """The tests' stand-in models (tests/support.py, loaded from its file: tests/ is not a package)."""
    import importlib.util

    from pc_core.hmm import HMM

    spec = importlib.util.spec_from_file_location("pcgen_test_support", ROOT / "tests" / "support.py")
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    tokenizer = support.build_tokenizer(directory / "tokenizer")
    support.build_tiny_lm(directory / "lm", tokenizer)
    HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id).save(directory / "hmm")
    return str(directory / "lm"), str(directory / "hmm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], batching: bool, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "pcgen", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-cache",
           "--batching" if batching else "--no-batching", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not become ready")


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


async def run_level(url: str, bodies: list[dict], concurrency: int) -> dict:
    pending = iter(bodies)
    latencies: list[float] = []
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        for body in pending:
            started = time.perf_counter()
            r = await client.post("/generate", json=body)
            latencies.append(time.perf_counter() - started)
            r.raise_for_status()
            out = r.json()
            assert all(o["constraint_satisfied"] for o in out["outputs"])
            tokens += out["usage"]["completion_tokens"]

    before = httpx.get(url + "/metrics").text
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    after = httpx.get(url + "/metrics").text
    return {
        "latencies": latencies,
        "wall": wall,
        "tokens": tokens,
        "steps": metric(after, "pcgen_batch_size_count") - metric(before, "pcgen_batch_size_count"),
        "batched": metric(after, "pcgen_batch_size_sum") - metric(before, "pcgen_batch_size_sum"),
    }


def summarize(runs: list[dict]) -> dict:
    latencies = [x for r in runs for x in r["latencies"]]
    wall = sum(r["wall"] for r in runs)
    steps = sum(r["steps"] for r in runs)
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {
        "requests": len(latencies),
        "rps": len(latencies) / wall,
        "tokens_s": sum(r["tokens"] for r in runs) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p95": q[18] * 1000,
        "mean_batch": sum(r["batched"] for r in runs) / steps if steps else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("--lm", help="LM path or hub id (default: a tiny random GPT-2 built here)")
    parser.add_argument("--hmm", help="HMM path (default: a random H=16 HMM built here)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=0, help="per level and round (default: max(12, 2c))")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every level")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per request (forced)")
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.lm and args.hmm:
            lm, hmm, source = args.lm, args.hmm, f"LM {args.lm}, HMM {args.hmm}"
        else:
            lm, hmm = build_tiny_models(tmp_path)
            source = "tiny random GPT-2 (2 layers, d=32) over a 643-token BPE, random HMM H = 16"
        env = {**os.environ, "PCGEN_LM": lm, "PCGEN_HMM": hmm, "PCGEN_DEVICE": os.environ.get("PCGEN_DEVICE", "auto"),
               "PCGEN_MAX_NEW_TOKENS": str(args.tokens), "PCGEN_MAX_BATCH_SIZE": str(args.max_batch_size),
               "PCGEN_MAX_QUEUE": "1024", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        pairs = itertools.combinations(WORDS, 2)
        plan = []  # (round, concurrency, bodies): the same requests for both modes, never repeated in a mode
        for round_ in range(args.rounds):
            for c in args.concurrency:
                n = args.requests or max(12, 2 * c)
                bodies = [{"prompt": "The", "keywords": list(next(pairs)), "num_beams": args.beams,
                           "max_new_tokens": args.tokens, "min_new_tokens": args.tokens} for _ in range(n)]  # fmt: skip
                plan.append((round_, c, bodies))
        servers = {}
        try:
            for batching in (
                True,
                False,
            ):  # both up at once; levels interleave so drift hits both modes alike
                servers[batching] = start_server(env, batching, tmp_path / f"server-{batching}.log")
            runs: dict[tuple[bool, int], list[dict]] = {}
            for round_, c, bodies in plan:
                for batching in (True, False):
                    run = asyncio.run(run_level(servers[batching][1], bodies, c))
                    runs.setdefault((batching, c), []).append(run)
                    print(
                        f"round {round_} batching={batching} c={c}: {len(bodies) / run['wall']:.2f} req/s",
                        flush=True,
                    )
        finally:
            for proc, _ in servers.values():
                proc.send_signal(signal.SIGTERM)
            for proc, _ in servers.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rows = []
        for batching in (True, False):
            for c in args.concurrency:
                r = summarize(runs[(batching, c)])
                rows.append(["on" if batching else "off", c, r["requests"], round(r["rps"], 2), round(r["tokens_s"], 1),
                             round(r["p50"], 1), round(r["p95"], 1), round(r["mean_batch"], 2)])  # fmt: skip
    body = (
        "## Service: throughput and latency\n\n"
        f"`python -m benchmarks.serve` ({machine()}); {source}. `pcgen serve` on loopback, response cache off, "
        f"max_batch_size {args.max_batch_size}; closed-loop clients at each concurrency; every request "
        f"`POST /generate` with its own 2-keyword constraint (compilation and guide precompute included), "
        f"beam search with {args.beams} beams, {args.tokens} new tokens forced. Batching off = one request "
        "decoded at a time (`--no-batching`). Both servers run side by side and every level alternates between "
        f"them, {args.rounds} rounds (the machine is shared: interleaving keeps drift out of the comparison). "
        "Mean batch = requests per decoding step.\n\n"
        + table(
            ["batching", "concurrency", "requests", "req/s", "tokens/s", "p50 ms", "p95 ms", "mean batch"],
            rows,
        )
    )
    print(body)
    write_section("benchmarks.md", "serve", body)


if __name__ == "__main__":
    main()
