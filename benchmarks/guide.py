"""Guide precompute and per-step cost against their matmul floors, measured in the same run.

    python -m benchmarks.guide [--hidden 256 1024 4096] [--keywords 1 2 3 4 5] [--beams 1 16 64]
                               [--vocab 50257 128256]

For each hidden size H (random HMM), vocabulary and keyword count (CommonGen concepts, inflections on,
horizon 32): the DFA's compile time, the precompute time vs n dense (S, H) x (H, H) fp32 matmuls, and for each
beam count B the `next_log_probs` time vs one dense (B, H) x (H, V) fp32 matmul. On CUDA both kernel paths
(torch, Triton) are measured. `--vocab 50257` (the default) is the GPT-2-shaped BPE of
benchmarks.constraints; `--vocab 128256` the Llama-3-shaped BPE of benchmarks.vocab128k (built locally on
first use, cached outside the repository); with both, every H runs both in turn, so their ratios come from
the same run. Each vocabulary's per-tokenizer tables are timed cold (fingerprint + VocabTables.build).
Writes docs/benchmarks.md, section "guide", or "guide-128k" when 128256 is among the vocabularies.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import time

import torch

from benchmarks._report import command, machine, table, write_section
from benchmarks.constraints import keyword_sets, load_tokenizer
from benchmarks.vocab128k import VOCAB_SIZE as VOCAB_128K
from benchmarks.vocab128k import load_tokenizer_128k
from pc_core import compile_constraint
from pc_core.constraints.compiler import COMPILED
from pc_core.constraints.vocab import VOCAB_TABLES, vocab_tables
from pc_core.guide import GUIDE_TABLES, ConstraintGuide
from pc_core.hmm import HMM
from pc_core.kernels import onednn_packed

DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}


def once(fn, device: torch.device) -> float:
    """Wall time of one fn() call, synchronising on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def timed(fn, reps: int, device: torch.device) -> float:
    """Median wall time of fn() over reps runs (after one warm-up)."""
    fn()
    return statistics.median(once(fn, device) for _ in range(reps))


def step_floors(
    emission_t: torch.Tensor, beams: list[int], reps: int, device: torch.device
) -> dict[int, object]:
    """Per beam count B, the fastest dense fp32 (B, H) x (H, V) product available, as a function to time next
    to each step: either layout of torch's matmul, and on CPU also oneDNN with the emission packed once, the
    product the guide itself uses. The layouts are built once (the packed copy shows in the peak memory
    column)."""
    emission = emission_t.T.contiguous()
    packed = onednn_packed.pack(emission_t)
    floors = {}
    for b in beams:
        rows = torch.rand(b, emission_t.shape[1], device=device)
        candidates = [lambda rows=rows: rows @ emission, lambda rows=rows: emission_t @ rows.T]
        if packed is not None:
            candidates.append(lambda rows=rows: onednn_packed.matmul_nt(rows, packed))
        floors[b] = min(candidates, key=lambda fn: timed(fn, reps, device))
    return floors


def timed_pair(step, floor, reps: int, device: torch.device) -> tuple[float, float]:
    """Medians of step() and floor() timed alternately, so that the shared VM's drift (up to ~1.5x over a
    run) hits both alike instead of the ratio."""
    step(), floor()  # warm-up
    steps, floors = [], []
    for _ in range(reps):
        steps.append(once(step, device))
        floors.append(once(floor, device))
    return statistics.median(steps), statistics.median(floors)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cold_tables(tokenizer) -> float:
    """Seconds to build the per-tokenizer tables from nothing: fingerprint and VocabTables.build."""
    VOCAB_TABLES.clear()
    tokenizer.__dict__.pop("_pcgen_fingerprint", None)
    started = time.perf_counter()
    vocab_tables(tokenizer)
    return time.perf_counter() - started


def measure_hidden(tokenizer, h: int, args, device, backends, rows: dict[str, list]) -> None:
    v, n = len(tokenizer), args.horizon
    hmm = HMM.random(h, v, seed=0, eos_token_id=tokenizer.eos_token_id, concentration=2.0, device=device)
    hmm.transition_probs()
    # the floors' own (V, H) copy, not cached in the HMM (the guide does not use one)
    step_floor = step_floors(hmm.log_emission.T.exp().contiguous(), args.beams, args.reps, device)
    setup_dfa = compile_constraint({"keywords": keyword_sets(1, 1)[0]}, tokenizer, max_states=8192)

    def first_use():  # builds the per-model caches: block totals, scaled transition, packed emission
        guide = ConstraintGuide(hmm, setup_dfa, horizon=n)
        guide.next_log_probs(guide.init_state(1))

    rows["setup"].append([v, h, round(once(first_use, device), 2)])
    print("first use", rows["setup"][-1], flush=True)
    for k in args.keywords:
        words = keyword_sets(k, 1)[0]
        COMPILED.clear()
        started = time.perf_counter()
        dfa = compile_constraint({"keywords": words}, tokenizer, max_states=8192)
        compile_ms = round((time.perf_counter() - started) * 1000, 1)
        s = dfa.num_states
        left = torch.rand(s, h, device=device)
        for backend in backends:
            os.environ["PCGEN_KERNELS"] = backend

            def precompute():
                GUIDE_TABLES.clear()
                return ConstraintGuide(hmm, dfa, horizon=n)

            # per-constraint cost only: first_use above built the per-model caches
            t_pre, floor_pre = timed_pair(
                precompute, lambda: [left @ hmm.transition_probs() for _ in range(n)], args.reps, device
            )
            guide = precompute()
            rows["pre"].append([v, h, k, s, compile_ms, backend, round(t_pre * 1000, 1),
                                round(floor_pre * 1000, 1), round(t_pre / floor_pre, 2),
                                round(guide.tables.nbytes / 2**20, 1)])  # fmt: skip
            print("precompute", rows["pre"][-1], flush=True)
            prefix = tokenizer.encode(f" The {words[0]}", add_special_tokens=False)
            for dtype in args.emission:
                guided = ConstraintGuide(hmm, dfa, horizon=n, emission_dtype=getattr(torch, dtype))
                for b in args.beams:
                    state = guided.init_state(b)
                    for token in prefix:
                        state = guided.advance(state, [token] * b)
                    step, floor = timed_pair(
                        lambda: guided.next_log_probs(state), step_floor[b], args.reps, device
                    )
                    adv = timed(lambda: guided.advance(state, [prefix[0]] * b), args.reps, device)
                    rows["step"].append([v, h, k, s, b, backend, DTYPE_NAMES[dtype], round(step * 1000, 2),
                                         round(floor * 1000, 2), round(step / floor, 2), round(adv * 1000, 2),
                                         round(peak_memory_mb(device))])  # fmt: skip
                    print("step", rows["step"][-1], flush=True)
        os.environ.pop("PCGEN_KERNELS", None)
        GUIDE_TABLES.clear()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guide")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--keywords", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument(
        "--emission",
        nargs="+",
        choices=list(DTYPE_NAMES),
        default=["float32", "bfloat16"],
        help="emission dtypes to time the step with (the floor stays fp32)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--vocab",
        type=int,
        nargs="+",
        choices=[50257, VOCAB_128K],
        default=[50257],
        help="vocabularies, each measured in turn: GPT-2-shaped (50257) and/or Llama-3-shaped (128256); with "
        "128256 the tables go to section 'guide-128k', else to 'guide'",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared box)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["torch", "triton"] if device.type == "cuda" else ["torch"]
    rows: dict[str, list] = {"setup": [], "pre": [], "step": []}
    described, tokenizers = [], []
    for vocab in args.vocab:
        tokenizer, source = load_tokenizer_128k() if vocab == VOCAB_128K else load_tokenizer()
        tables_s = cold_tables(tokenizer)
        print(f"{source}: V = {len(tokenizer)}, per-tokenizer tables {tables_s:.2f} s", flush=True)
        described.append(
            f"V = {len(tokenizer)}: {source}; per-tokenizer tables (fingerprint and `VocabTables.build`, cold, "
            f"once per tokenizer) {tables_s:.2f} s"
        )
        tokenizers.append(tokenizer)
    for h in args.hidden:  # H outermost: the peak-memory column (the process's peak so far) grows row by row
        for tokenizer in tokenizers:
            measure_hidden(tokenizer, h, args, device, backends, rows)
            gc.collect()  # the previous HMM and floors go before the next are built
            if device.type == "cuda":
                torch.cuda.empty_cache()
    big = VOCAB_128K in args.vocab
    title = "Guide: precompute and per-step cost" + (" at V = 128,256" if big else "")
    body = (
        f"## {title}\n\n"
        f"`{command()}` ({machine()}); random HMM, horizon {args.horizon}, keyword sets of CommonGen concepts "
        f"with inflections. {'. '.join(described)}. DFA compile times start from an empty DFA cache. "
        "Floors are measured in the same run: n dense fp32 (S, H) x (H, H) "
        "matmuls for the precompute, one dense fp32 (B, H) x (H, V) matmul for a step (the fastest of torch's "
        "matmul in either layout and, on CPU, oneDNN with the emission packed once, the product the step uses; "
        "timed alternately with the step). Precompute and its floor are timed alternately too, medians of "
        f"{args.reps}. "
        "Goals: step <= 1.5x (fp32), "
        "precompute <= 2x.\n\n### Precompute\n\n"
        "Once per model (not per constraint), the first guide builds the caches every later one shares: "
        "per-block emission totals (float64, for the class masses) and the packed emission blocks. Seconds "
        "for that first guide and its first step: "
        + ", ".join(f"V = {v}, H = {h}: {t} s" for v, h, t in rows["setup"])
        + ".\n\n"
        + table(
            [
                "V",
                "H",
                "keywords",
                "DFA states",
                "compile ms",
                "kernels",
                "precompute ms",
                "floor ms",
                "ratio",
                "tables MiB",
            ],
            rows["pre"],
        )  # fmt: skip
        + "\n\n### Step (`next_log_probs` for B beams; `advance` listed separately)\n\n"
        + table(
            [
                "V",
                "H",
                "keywords",
                "DFA states",
                "B",
                "kernels",
                "emission",
                "step ms",
                "floor ms",
                "ratio",
                "advance ms",
                "peak MiB",
            ],
            rows["step"],
        )  # fmt: skip
    )
    print(body)
    write_section("benchmarks.md", "guide-128k" if big else "guide", body)


if __name__ == "__main__":
    main()
