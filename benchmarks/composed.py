"""Compile time of character constraints composed with keywords / word_count (issue 27) at V = 50,257.

    python -m benchmarks.composed [--schemas 40] [--baseline 60] [--threads 1]

`{"all": [{"json_schema": S}, {"keywords": [...]}]}`, regex + keyword and pattern + word_count, compiled by
`compile_constraint` on ../shared/tokenizers/bpe-50257: fixed constraints from empty caches, then
`--schemas` MaskBench schemas (../shared/data/jsonschema, seeded sample) alone and with one and three
keywords (the keywords' token automata cached after the first schema, as in a server). `--baseline S` also
runs the word-level compiler (explicit.py, the path these constraints took before char_fold.py /
token_product.py) on the first fixed constraint with a budget of S seconds. Times are this thread's CPU
time (the machine is shared); the load average is printed beside them. Writes a section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import time

from benchmarks._report import SHARED, command, machine, table, write_section
from pc_core.constraints import compile_constraint
from pc_core.constraints.compiler import COMPILED
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.token_product import COMPONENTS
from pc_core.errors import ConstraintError, ConstraintTooComplex

NOTE = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 64}, "id": {"type": "integer"}},
        "required": ["text", "id"], "additionalProperties": False}  # fmt: skip
FIXED = [
    ("json_schema alone", {"json_schema": NOTE}),
    ("json_schema + keyword", {"all": [{"json_schema": NOTE}, {"keywords": ["refund"]}]}),
    ("json_schema + 2 keywords", {"all": [{"json_schema": NOTE}, {"keywords": ["refund", "order"]}]}),
    ("json_schema + 3 keywords", {"all": [{"json_schema": NOTE}, {"keywords": ["refund", "order", "late"]}]}),
    ("json_schema + not keyword", {"all": [{"json_schema": NOTE}, {"not": {"keyword": "refund"}}]}),
    (
        "json_schema + word_count 5-20",
        {"all": [{"json_schema": NOTE}, {"word_count": {"min": 5, "max": 20}}]},
    ),
    ("regex + keyword", {"all": [{"regex": "[A-Za-z ,.]{1,80}"}, {"keyword": "refund"}]}),
    (
        "pattern + word_count 5-20",
        {"all": [{"pattern": "order #\\d+"}, {"word_count": {"min": 5, "max": 20}}]},
    ),
    ("any(json_schema, keyword)", {"any": [{"json_schema": NOTE}, {"keyword": "refund"}]}),
    (
        "json_schema + forbidden (4 words)",
        {"all": [{"json_schema": NOTE}, {"forbidden": ["bad", "worse", "awful", "terrible"]}]},
    ),
]
KEYWORDS = ["refund", "order", "late"]


def timed(spec: object, tokenizer: object, budget: float) -> tuple[float, object]:
    """(thread CPU seconds, TokenDFA or the error's short name)."""
    started = time.thread_time()
    try:
        dfa = compile_constraint(spec, tokenizer, time_budget_s=budget)
    except ConstraintTooComplex as err:
        dfa = "time budget" if err.out_of_time else "state cap"
    except ConstraintError:
        dfa = "422"
    return time.thread_time() - started, dfa


def fixed_rows(tokenizer: object, budget: float) -> list[list]:
    rows = []
    for name, spec in FIXED:
        COMPILED.clear()
        COMPONENTS.clear()
        seconds, dfa = timed(spec, tokenizer, budget)
        states = dfa if isinstance(dfa, str) else dfa.num_states
        rows.append([name, f"{seconds:.2f}", states, "-" if isinstance(dfa, str) else dfa.num_classes])
    COMPILED.clear()
    COMPONENTS.clear()
    started = time.thread_time()
    lazy = compile_constraint(FIXED[3][1], tokenizer, time_budget_s=budget, lazy=True)  # past 5,000 states
    rows.append(
        [f"{FIXED[3][0]}, lazy=True", f"{time.thread_time() - started:.2f}", type(lazy).__name__, "-"]
    )
    return rows


def schema_rows(tokenizer: object, count: int, budget: float) -> tuple[list[list], int]:
    """Per variant (alone, + 1 keyword, + 3 keywords): p50 / p90 / max CPU s, p50 states, failures."""
    with gzip.open(SHARED / "data" / "jsonschema" / "maskbench-shared.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    random.Random(0).shuffle(rows)
    schemas = []
    for row in rows:
        if len(schemas) == count:
            break
        try:
            spec = {"json_schema": row["schema"]}
            parse_constraint(spec)  # supported (its character automaton builds)
            schemas.append(spec)
        except (ConstraintError, RecursionError):
            continue
    out = []
    for name, extra in (("alone", []), ("+ 1 keyword", KEYWORDS[:1]), ("+ 3 keywords", KEYWORDS)):
        times, states, failed = [], [], 0
        for spec in schemas:
            COMPILED.clear()
            seconds, dfa = timed({"all": [spec, {"keywords": extra}]} if extra else spec, tokenizer, budget)
            if isinstance(dfa, str):
                failed += 1
                continue
            times.append(seconds)
            states.append(dfa.num_states)
        times.sort()
        p = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
        out.append([name, len(times), f"{p(0.5):.2f}", f"{p(0.9):.2f}", f"{times[-1]:.2f}",
                    int(statistics.median(states)), failed])  # fmt: skip
    return out, len(schemas)


def baseline(tokenizer: object, budget: float) -> str:
    from pc_core.constraints.explicit import _Compiler
    from pc_core.constraints.spec import parse_constraint
    from pc_core.constraints.vocab import vocab_tables

    started = time.thread_time()
    try:
        dfa = _Compiler(parse_constraint(FIXED[1][1]), vocab_tables(tokenizer), 250_000, budget).run()
        outcome = f"{dfa.num_states} states"
    except ConstraintTooComplex as err:
        outcome = f"stopped at the {budget:g} s budget ({err.message.split('(')[-1].rstrip(')')})"
    return f"{time.thread_time() - started:.1f} s CPU, {outcome}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.composed")
    parser.add_argument("--schemas", type=int, default=40, help="MaskBench schemas (0: none)")
    parser.add_argument("--baseline", type=float, default=0, help="word-level compiler budget, s (0: skip)")
    parser.add_argument("--budget", type=float, default=60.0, help="time budget per compile, s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the compile itself is numpy)")
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    path = SHARED / "tokenizers" / "bpe-50257"
    if not path.exists():
        print("../shared/tokenizers/bpe-50257 is not available")
        return
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    compile_constraint({"regex": "a"}, tokenizer)  # vocabulary tables, outside the timings
    compile_constraint(
        {"all": [{"pattern": "a"}, {"keyword": "warm"}]}, tokenizer
    )  # dictionaries, \\w, casefold
    load = os.getloadavg()
    fixed = fixed_rows(tokenizer, args.budget)
    schemas, n = schema_rows(tokenizer, args.schemas, args.budget) if args.schemas else ([], 0)
    base = baseline(tokenizer, args.baseline) if args.baseline else None
    body = [
        "### Character constraints with keywords / word_count: compile time at V = 50,257",
        "",
        f"`{command()}`; shared bpe-50257; {machine()}. This thread's CPU seconds; load average "
        f"{load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (a shared 2-core machine). Each "
        "fixed constraint from empty caches; the JSON character automaton is built when the constraint is "
        "parsed (benchmarks/jsonschema.py measures it), so the times are the token level.",
        "",
        table(["constraint", "compile s (CPU)", "states", "token classes"], fixed),
    ]
    if schemas:
        body += ["", f"{n} MaskBench schemas (seeded sample of those supported), each alone and with keywords "
                 f"{', '.join(KEYWORDS)} (their token automata cached after the first schema):", "",
                 table(["variant", "compiled", "p50 s", "p90 s", "max s", "states p50", "over budget / cap"],
                       schemas)]  # fmt: skip
    if base is not None:
        body += [
            "",
            f"Before (the word-level compiler, `explicit._Compiler`, on `json_schema + keyword`): {base}.",
        ]
    text = "\n".join(body)
    print(text)
    write_section("benchmarks.md", "composed", text)


if __name__ == "__main__":
    main()
