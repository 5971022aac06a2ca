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

    python -m benchmarks.serve --scenario neighbours [--quiet-requests 40]

Noisy neighbours: two clients (each its own API key) loop the most expensive rejected constraint (an `ordered`
list of 16 keywords with 32 variants each, ~5 KB of JSON, rejected as too complex after seconds of compiling),
once repeating one constraint and once a new one every request (cache-busting), without backing off; a third
client sends ordinary requests (a new two-keyword constraint each) one after another. Its p50/p95 are compared
with the same client alone on the same server (the floor), and with the compile pool off (compiling in the
serving process, as before the pool existed). Writes "serve-neighbours".

    python -m benchmarks.serve --scenario memory [--requests 2000]

Bounded memory: distinct requests against a server with small cache limits; the resident memory of the server
and its compile workers is sampled as the requests go, beside the caches' own byte counts. Writes
"serve-memory".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks._report import ROOT, machine, table, write_section

WORDS = ["dog", "frisbee", "catch", "coffee", "garden", "snow", "winter", "children", "lake", "house", "night",
         "team", "tree", "girl", "fish", "field", "sky", "stove", "city", "park", "couch", "cat", "pan", "jump",
         "early", "brown", "lazy", "bird", "book", "rain", "boy", "game", "fans", "roof", "friend", "work"]  # fmt: skip


def build_tiny_models(directory: Path) -> tuple[str, str]:
    """The tests' stand-in models (tests/tiny_models.py, loaded from its file: tests/ is not a package)."""
    import importlib.util

    from pc_core.hmm import HMM

    spec = importlib.util.spec_from_file_location("pcgen_tiny_models", ROOT / "tests" / "tiny_models.py")
    tiny_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_models)
    tokenizer = tiny_models.build_tokenizer(directory / "tokenizer")
    tiny_models.build_tiny_lm(directory / "lm", tokenizer)
    HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id).save(directory / "hmm")
    return str(directory / "lm"), str(directory / "hmm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    env: dict[str, str], batching: bool, log: Path, cache: bool = False
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "pcgen", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--cache" if cache else "--no-cache", "--batching" if batching else "--no-batching",
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, url, log)
    return proc, url


def metric(text: str, name: str) -> float:
    """Sum of the samples of `name`, whatever their labels (`model_name`, ...)."""
    lines = text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((name + " ", name + "{")))


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


def stop_servers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ------------------------------------------------------------------------------ throughput and latency (load)


def load_scenario(args: argparse.Namespace, env: dict[str, str], source: str, tmp_path: Path) -> None:
    env = {**env, "PCGEN_MAX_NEW_TOKENS": str(args.tokens), "PCGEN_MAX_BATCH_SIZE": str(args.max_batch_size)}
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
        for batching in (True, False):  # both up at once; levels interleave so drift hits both modes alike
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
        stop_servers([proc for proc, _ in servers.values()])
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


# ------------------------------------------------------------------------------------------ noisy neighbours

NOISY_KEYS = ("noisy-client-one", "noisy-client-two")
QUIET_KEY = "quiet-client-key"


def expensive_constraint(rng: random.Random) -> dict:
    """The most expensive rejected constraint we know: 16 ordered keywords of 32 variants each (random letter
    strings, so nothing is shared between requests): seconds of compiling, then `constraint_too_complex`."""

    def word() -> str:
        return "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 7)))

    return {"ordered": [{"keyword": word(), "variants": [word() for _ in range(31)]} for _ in range(16)]}


def key_header(key: str, keys: bool) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if keys else {}


def quiet_latencies(
    url: str, bodies: list[dict], time_limit_s: float, keys: bool = True
) -> tuple[list[float], int]:
    """The quiet client's latencies, one request after another (stops early at the time limit); and how
    many of its requests failed."""
    latencies, failed = [], 0
    stop_at = time.monotonic() + time_limit_s
    with httpx.Client(base_url=url, timeout=120, headers=key_header(QUIET_KEY, keys)) as client:
        for body in bodies:
            if time.monotonic() > stop_at:
                break
            started = time.perf_counter()
            r = client.post("/generate", json=body)
            latencies.append(time.perf_counter() - started)
            failed += r.status_code != 200
    return latencies, failed


def noisy_client(index: int, url: str, repeat: bool, stop: Any, statuses: Any, keys: bool) -> None:
    """One noisy client: its own process at the lowest CPU priority, as a client on another machine (in a
    thread of the measuring process it would take the GIL from the quiet client's thread; at normal priority
    its JSON encoding would take the cores the server runs on). It still sends its next request the moment
    the previous one is answered."""
    os.nice(
        19
    )  # their own CPU (elsewhere in a deployment) must not take this 2-core box's cores from the server
    rng = random.Random(index)
    fixed = expensive_constraint(rng)
    headers = key_header(NOISY_KEYS[index], keys)
    counts: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        while not stop.is_set():
            body = {"prompt": "x", "max_new_tokens": 8,
                    "constraint": fixed if repeat else expensive_constraint(rng)}  # fmt: skip
            try:
                status = client.post("/generate", json=body).status_code
            except httpx.TransportError:
                status = 0
            counts[status] = counts.get(status, 0) + 1
    statuses.put(counts)


def with_noisy_clients(url: str, repeat: bool, measure, keys: bool = True) -> tuple[object, dict[int, int]]:
    """Run `measure()` while two clients loop expensive constraints (one fixed each when `repeat`), never
    backing off; returns measure's result and the noisy clients' response status counts."""
    context = multiprocessing.get_context("spawn")
    stop, queue = context.Event(), context.Queue()
    clients = [context.Process(target=noisy_client, args=(i, url, repeat, stop, queue, keys), daemon=True)
               for i in range(len(NOISY_KEYS))]  # fmt: skip
    for client in clients:
        client.start()
    time.sleep(3.0)  # the noisy clients have started and filled the compile worker and their backlogs
    try:
        result = measure()
    finally:
        stop.set()
    statuses: dict[int, int] = {}
    for _ in clients:
        for status, count in queue.get(timeout=150).items():
            statuses[status] = statuses.get(status, 0) + count
    for client in clients:
        client.join(10)
    return result, statuses


ISOLATION = (
    "What holds it, with or without API keys (without keys all three clients are one address, so nothing "
    "that tells clients apart can help): the compile pool judges the work, not the client. A constraint's "
    "cost is estimated from its structure before compiling (keywords x variants x counters); obviously heavy "
    "ones go to the heavy lane (worker processes at nice 10), the rest to the light lane (its own worker, "
    "compiles of at most 1 s; a misjudged one moves on to the heavy lane when it overruns), so a heavy compile "
    "never delays a light one, and only light constraints get the quick in-process attempt. Also: a client whose constraint a worker rejected or took over 0.5 s on skips the in-process quic"
    "k attempt for 10 s (else each of its slow constraints would hold the GIL for the quick budget); refu"
    "sals that cost a compile are remembered by request body and a repeat is answered from memory after a"
    " 50 ms pause (a tarpit: a looping client sends a few requests a second, not hundreds); the server se"
    "ts Python's GIL switch interval to 0.2 ms, so the decoding thread wins the GIL back quickly after ea"
    "ch torch op. Before these (compile pool only), the same-constraint row measured p50 9.2 s, p95 11.5 "
    "s (59.9x)."
)


def neighbours_scenario(args: argparse.Namespace, env: dict[str, str], source: str, tmp_path: Path) -> None:
    env = {**env, "PCGEN_API_KEYS": ",".join((*NOISY_KEYS, QUIET_KEY)), "PCGEN_MAX_NEW_TOKENS": "64"}
    pairs = itertools.combinations(WORDS, 2)

    def ordinary(n: int) -> list[dict]:
        return [{"prompt": "The", "keywords": list(next(pairs)), "num_beams": 2, "max_new_tokens": args.tokens}
                for _ in range(n)]  # fmt: skip

    n, rows = args.quiet_requests, []
    modes = [(args.compile_workers, True), (args.compile_workers, False)] + [(0, True)] * args.without_pool
    for workers, keys in modes:
        server_env = {**env, "PCGEN_COMPILE_WORKERS": str(workers)}
        if not keys:
            server_env.pop("PCGEN_API_KEYS")
        proc, url = start_server(server_env, True, tmp_path / f"n{workers}-{keys}.log")
        try:
            quiet_latencies(url, ordinary(3), 60, keys)  # first-use costs out of the floor
            floor, _ = quiet_latencies(url, ordinary(n), 600, keys)
            floor_p95 = percentile(floor, 95)
            label = f"{workers}, {'own API keys' if keys else 'no keys, one address'}"
            rows.append(row(label, "alone (floor)", floor, 0, floor_p95, {}))
            scenarios = (("same constraint repeated", True), ("new constraint every request", False))
            for name, repeat in scenarios if workers else scenarios[1:]:
                limit = 600 if workers else 120  # without the pool a quiet request can take many seconds
                (latencies, failed), statuses = with_noisy_clients(
                    url, repeat, lambda: quiet_latencies(url, ordinary(n), limit, keys), keys
                )
                rows.append(row(label, name, latencies, failed, floor_p95, statuses))
                print(rows[-1], flush=True)
        finally:
            stop_servers([proc])
    body = (
        "## Service: noisy neighbours\n\n"
        f"`python -m benchmarks.serve --scenario neighbours` ({machine()}); {source}. One `pcgen serve`; two "
        "clients (each its own process at nice 19: in a deployment their CPU is elsewhere; with their own API "
        "keys, or all three clients without keys from 127.0.0.1) loop "
        "the most expensive rejected constraint (16 `ordered` keywords x 32 variants, ~5 KB) as fast as the server "
        "answers, without backing off; a third client sends ordinary "
        f"requests one after another (a new two-keyword constraint each, beam 2, {args.tokens} new tokens). "
        "Its floor is the same client alone on the same server, measured first. `compile workers 0` is the "
        "design before the compile pool (compiling in the serving process), run with fewer quiet requests. "
        + ISOLATION
        + "\n\n"
        + table(
            [
                "compile workers, identities",
                "noisy clients",
                "quiet requests",
                "failed",
                "p50 ms",
                "p95 ms",
                "p95 / floor p95",
                "noisy answers",
            ],
            rows,
        )  # fmt: skip
    )
    print(body)
    write_section("benchmarks.md", "serve-neighbours", body)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def row(
    workers: int | str, name: str, latencies: list[float], failed: int, floor_p95: float, statuses: dict
) -> list:
    p95 = percentile(latencies, 95)
    answers = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items())) or "-"
    return [workers, name, len(latencies), failed, round(statistics.median(latencies) * 1000, 1),
            round(p95 * 1000, 1), f"{p95 / floor_p95:.2f}x", answers]  # fmt: skip


# --------------------------------------------------------------------------------------------- bounded memory


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the compile workers), in MiB."""
    total = 0.0
    for entry in [str(pid), *(p for p in os.listdir("/proc") if p.isdigit())]:
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            if entry != str(pid) and parent != pid:
                continue
            with open(f"/proc/{entry}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def memory_scenario(args: argparse.Namespace, env: dict[str, str], source: str, tmp_path: Path) -> None:
    limits = {"PCGEN_DFA_CACHE_BYTES": str(2 * 2**20), "PCGEN_GUIDE_CACHE_BYTES": str(8 * 2**20),
              "PCGEN_RESPONSE_CACHE_BYTES": str(2**20)}  # fmt: skip
    env = {**env, **limits}
    proc, url = start_server(env, True, tmp_path / "memory.log", cache=True)
    triples = itertools.combinations(WORDS, 3)
    rows = []
    try:
        checkpoints = sorted({0, *range(250, args.requests + 1, 250), args.requests})
        done = 0
        for checkpoint in checkpoints:
            bodies = [{"prompt": "The", "keywords": list(next(triples)), "max_new_tokens": 8}
                      for _ in range(checkpoint - done)]  # fmt: skip
            if bodies:
                asyncio.run(run_level(url, bodies, 4))
            done = checkpoint
            text = httpx.get(url + "/metrics").text
            caches = [
                metric(text, f'pcgen_cache_bytes{{cache="{name}"}}') / 2**20
                for name in ("dfa", "guide", "response")
            ]
            rows.append([done, round(rss_mb(proc.pid), 1), *(round(c, 2) for c in caches)])
            print(rows[-1], flush=True)
    finally:
        stop_servers([proc])
    growth = rows[-1][1] - rows[1][1] if len(rows) > 2 else 0.0
    body = (
        "## Service: bounded memory\n\n"
        f"`python -m benchmarks.serve --scenario memory --requests {args.requests}` ({machine()}); {source}. "
        "Distinct requests (a new three-keyword constraint each, 8 tokens, 4 concurrent clients) against a "
        "server with small cache limits: DFA cache 2 MiB, guide-table cache 8 MiB, response cache 1 MiB. "
        "RSS = the server plus its compile worker. Cache columns are the caches' own byte counts "
        f"(`pcgen_cache_bytes`). RSS growth after the first 250 requests: {growth:+.1f} MiB.\n\n"
        + table(["requests", "RSS MiB", "DFA cache MiB", "guide cache MiB", "response cache MiB"], rows)
    )
    print(body)
    write_section("benchmarks.md", "serve-memory", body)


def wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not become ready")


SCENARIOS = {"load": load_scenario, "neighbours": neighbours_scenario, "memory": memory_scenario}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("--scenario", choices=SCENARIOS, default="load")
    parser.add_argument("--lm", help="LM path or hub id (default: a tiny random GPT-2 built here)")
    parser.add_argument("--hmm", help="HMM path (default: a random H=16 HMM built here)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=0,
                        help="load: per level and round (default: max(12, 2c)); memory: in all (default 2000)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every level")
    parser.add_argument("--tokens", type=int, default=16, help="new tokens per request")
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument(
        "--quiet-requests", type=int, default=40, help="neighbours: the quiet client's requests"
    )
    parser.add_argument("--compile-workers", type=int, default=1, help="neighbours: the heavy lane's size")
    parser.add_argument(
        "--without-pool",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="neighbours: also run the design before the compile pool (compile workers 0)",
    )
    args = parser.parse_args()
    if args.scenario == "memory" and not args.requests:
        args.requests = 2000

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.lm and args.hmm:
            lm, hmm, source = args.lm, args.hmm, f"LM {args.lm}, HMM {args.hmm}"
        else:
            lm, hmm = build_tiny_models(tmp_path)
            source = "tiny random GPT-2 (2 layers, d=32) over a 643-token BPE, random HMM H = 16"
        env = {**os.environ, "PCGEN_LM": lm, "PCGEN_HMM": hmm, "PCGEN_DEVICE": os.environ.get("PCGEN_DEVICE", "auto"),
               "PCGEN_MAX_QUEUE": "1024", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
        SCENARIOS[args.scenario](args, env, source, tmp_path)


if __name__ == "__main__":
    main()
