"""Explicit compilation of large automata (issue 26 §2): the six-keyword constraint, and `once` over n keywords
(each exactly once: all of count(k, 1, 1), 2^n word-level situations, about 133,000 minimal states at n = 10).

    python -m benchmarks.big_compile --threads 1
    python -m benchmarks.big_compile --threads 1 --sizes 6 8 --state-at-a-time --no-report

Each constraint is compiled from an empty DFA cache on the shared bpe-50257 tokenizer (../shared/tokenizers/
bpe-50257; a synthetic 50,256-word BPE where it is absent), after one warm-up compile that loads the
inflection dictionaries; last, where the CommonGen data is present, the families benchmark's once-10-0
instance (benchmarks/families.py, seed 0). Seconds are this thread's CPU time (time.thread_time; the machine
is shared: wall seconds and the 1-minute load average beside them), the median of --reps. The time budget is
lifted for the measurement (the library's default, Settings.compile_time_budget_s, is 10 s of wall time).
With --state-at-a-time the same constraint is compiled again exploring one state at a time
(exploration._Exploration, the path kept for suffix / stop strings), for comparison. The table goes to
docs/benchmarks.md between `<!-- bench:big-compile -->` markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks._report import SHARED, command, machine, table, write_section

WORDS = "dog frisbee catch throw park grass girl ball tree lake".split()
SIX = {"keywords": ["dog", "frisbee", "catch", "throw", "park", "grass"]}


def once(n: int) -> dict:
    return {"all": [{"count": {"keyword": w}, "min": 1, "max": 1} for w in WORDS[:n]]}


def timed(compile_once) -> tuple[float, float, object]:  # noqa: ANN001
    cpu, wall = time.thread_time(), time.perf_counter()
    dfa = compile_once()
    return time.thread_time() - cpu, time.perf_counter() - wall, dfa


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.big_compile")
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 8, 10], help="keywords of `once`")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads")
    parser.add_argument("--state-at-a-time", action="store_true", help="also time the per-state exploration")
    parser.add_argument("--no-report", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks.constraints import load_tokenizer
    from pc_core.constraints.compiler import COMPILED, compile_constraint
    from pc_core.constraints.explicit import _Compiler
    from pc_core.constraints.spec import parse_constraint
    from pc_core.constraints.vocab import vocab_tables

    tokenizer, source = load_tokenizer()
    tables = vocab_tables(tokenizer)
    compile_constraint({"keyword": "dog"}, tokenizer)  # warm-up: the inflection dictionaries
    cases = [("six keywords", SIX)] + [(f"once, {n} keywords", once(n)) for n in args.sizes]
    data = SHARED / "data" / "commongen"
    if (data / "commongen.dev.jsonl").exists():  # the families benchmark's once-10-0 (issue 26's own case)
        from benchmarks.families import load_concepts, make_instances

        (case,) = make_instances(load_concepts(data), ["once"], [10], 1, 0)
        cases.append((f"once-10-0 of benchmarks.families ({' '.join(case['concepts'])})", case["constraint"]))
    rows = []
    for name, spec in cases:
        cpu, wall, loads = [], [], []
        for _ in range(args.reps):
            COMPILED.clear()
            c, w, dfa = timed(
                lambda: compile_constraint(spec, tokenizer, max_states=250_000, time_budget_s=600)
            )
            cpu.append(c)
            wall.append(w)
            loads.append(os.getloadavg()[0])
        row = [name, f"{dfa.num_states:,}", dfa.num_classes, round(statistics.median(cpu), 2),
               round(statistics.median(wall), 2), round(max(loads), 1)]  # fmt: skip
        if args.state_at_a_time:
            constraint = parse_constraint(spec)
            c, _, slow = timed(lambda: _Compiler(constraint, tables, 250_000, 600).run(frontier=False))
            assert slow.content_key == dfa.content_key  # the same automaton
            row.append(round(c, 2))
        rows.append(row)
        print(row, flush=True)
    headers = ["constraint", "states", "token classes", "compile s (thread CPU)", "compile s (wall)", "load"]
    if args.state_at_a_time:
        headers.append("state at a time, s (thread CPU)")
    body = [
        "## Large explicit automata",
        "",
        f"`{command()}`; {source} (V = {len(tokenizer)}); {machine()}. Compile seconds from an empty DFA cache, "
        "after a warm-up compile (the inflection dictionaries); thread CPU time, wall time and the 1-minute "
        "load average beside it (the machine is shared). `once, n keywords`: all of count(keyword, 1, 1) over "
        f"the first n of {', '.join(WORDS)}. Goals (issue 26 §2): the six-keyword constraint under 1 s, "
        "automata of 100,000 states within the 10 s compile budget.",
        "",
        table(headers, rows),
    ]
    text = "\n".join(body)
    print(text)
    if not args.no_report:
        write_section("benchmarks.md", "big-compile", text)


if __name__ == "__main__":
    main()
