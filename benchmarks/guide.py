"""Guide precompute and per-step cost against their matmul floors, measured in the same run.

    python benchmarks/guide.py [--hidden 256 1024 4096] [--keywords 1 2 3 4 5] [--beams 1 16 64]

For each hidden size H (V = 50,257, random HMM) and keyword count (CommonGen concepts, inflections on,
horizon 32): the precompute time vs n dense (S, H) x (H, H) fp32 matmuls, and for each beam count B the
`next_log_probs` time vs one dense (B, H) x (H, V) fp32 matmul. On CUDA both kernel paths (torch, Triton)
are measured. Writes docs/benchmarks.md (section "guide").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._report import command, machine, table, write_section  # noqa: E402
from benchmarks.constraints import keyword_sets, load_tokenizer  # noqa: E402
from pc_core import compile_constraint  # noqa: E402
from pc_core.guide import _TABLES, ConstraintGuide  # noqa: E402
from pc_core.hmm import HMM  # noqa: E402


def timed(fn, reps: int, device: torch.device) -> float:
    """Median wall time of fn() over reps runs (after one warm-up), synchronising on CUDA."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--keywords", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared box)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["torch", "triton"] if device.type == "cuda" else ["torch"]
    tokenizer, source = load_tokenizer()
    v = len(tokenizer)
    n = args.horizon
    pre_rows, step_rows = [], []
    for h in args.hidden:
        hmm = HMM.random(h, v, seed=0, eos_token_id=tokenizer.eos_token_id, concentration=2.0, device=device)
        hmm.emission_t()
        hmm.transition_probs()
        for k in args.keywords:
            words = keyword_sets(k, 1)[0]
            dfa = compile_constraint({"keywords": words}, tokenizer, max_states=8192)
            s = dfa.num_states
            left = torch.rand(s, h, device=device)
            floor_pre = timed(lambda: [left @ hmm.transition_probs() for _ in range(n)], 1, device)
            for backend in backends:
                os.environ["PCGEN_KERNELS"] = backend

                def precompute():
                    _TABLES.clear()
                    return ConstraintGuide(hmm, dfa, horizon=n)

                t_pre = timed(precompute, 1, device)
                guide = precompute()
                pre_rows.append(
                    [
                        h,
                        k,
                        s,
                        backend,
                        round(t_pre * 1000, 1),
                        round(floor_pre * 1000, 1),
                        round(t_pre / floor_pre, 2),
                        round(guide.tables.nbytes / 2**20, 1),
                    ]
                )
                print("precompute", pre_rows[-1], flush=True)
                prefix = tokenizer.encode(f" The {words[0]}", add_special_tokens=False)
                for b in args.beams:
                    state = guide.init_state(b)
                    for token in prefix:
                        state = guide.advance(state, [token] * b)
                    rows = torch.rand(b, h, device=device)
                    # the floor is the faster of the two layouts of the same fp32 product
                    emission_t = hmm.emission_t()
                    emission = emission_t.T.contiguous()
                    floor = min(
                        timed(lambda: rows @ emission, args.reps, device),
                        timed(lambda: emission_t @ rows.T, args.reps, device),
                    )
                    step = timed(lambda: guide.next_log_probs(state), args.reps, device)
                    adv = timed(lambda: guide.advance(state, [prefix[0]] * b), args.reps, device)
                    step_rows.append(
                        [
                            h,
                            k,
                            s,
                            b,
                            backend,
                            round(step * 1000, 2),
                            round(floor * 1000, 2),
                            round(step / floor, 2),
                            round(adv * 1000, 2),
                            round(peak_memory_mb(device)),
                        ]
                    )
                    print("step", step_rows[-1], flush=True)
            os.environ.pop("PCGEN_KERNELS", None)
            _TABLES.clear()
    body = (
        "## Guide: precompute and per-step cost\n\n"
        f"`{command()}` ({machine()}); {source}, V = {v}, random HMM, horizon {n}, keyword sets "
        "of CommonGen concepts with inflections. Floors are measured in the same run: n dense fp32 (S, H) x (H, H) "
        "matmuls for the precompute, one dense fp32 (B, H) x (H, V) matmul for a step. Goals: step <= 1.5x, "
        "precompute <= 2x.\n\n### Precompute\n\n"
        + table(
            ["H", "keywords", "DFA states", "kernels", "precompute ms", "floor ms", "ratio", "tables MiB"],
            pre_rows,
        )
        + "\n\n### Step (`next_log_probs` for B beams; `advance` listed separately)\n\n"
        + table(
            [
                "H",
                "keywords",
                "DFA states",
                "B",
                "kernels",
                "step ms",
                "floor ms",
                "ratio",
                "advance ms",
                "peak MiB",
            ],
            step_rows,
        )
    )
    print(body)
    write_section("benchmarks.md", "guide", body)


if __name__ == "__main__":
    main()
