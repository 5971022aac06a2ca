"""Constraint compilation: time and DFA size for keywords, blocklists, raw token ids and the CommonGen dev sets.

    python -m benchmarks.constraints [--sets 10] [--commongen]

Uses ../shared/tokenizers/bpe-50257 and CommonGen concept sets when present; otherwise a synthetic
50,257-token vocabulary and a fixed word list. `--commongen` also compiles every CommonGen dev constraint
(concepts with their part of speech, as benchmarks/commongen.py decodes them) for the 50,257-token BPE and,
when present, the proxy LM's tokenizer. Writes the tables to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import statistics
import time

from benchmarks._report import SHARED, machine, table, write_section
from pc_core.constraints import compile_constraint
from pc_core.constraints.compiler import COMPILED
from pc_core.constraints.vocab import vocab_tables

FALLBACK_WORDS = (
    "dog frisbee catch field run boy snow ski mountain cook pan vegetable water drink glass".split()
)
CONCEPTS = ["field", "stand", "look", "tree"]


def load_tokenizer():
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = SHARED / "tokenizers" / "bpe-50257"
    if path.exists():
        return AutoTokenizer.from_pretrained(str(path)), "shared bpe-50257"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    rng = random.Random(0)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(vocab) < 50256:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        vocab.setdefault(rng.choice(["Ġ", "", "Ġ", "ĠT"]) + word, len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>"
    ), "synthetic 50,257-token vocabulary"


def dev_constraints() -> list[dict]:
    """Every CommonGen dev constraint, concepts with their part of speech (as benchmarks/commongen.py)."""
    path = SHARED / "data" / "commongen" / "commongen.dev.jsonl"
    pos = {"N": "noun", "V": "verb", "A": "adj"}
    out = []
    for line in path.read_text().splitlines():
        tagged = [c.split("_") for c in json.loads(line)["concept_set"].split("#")]
        out.append({"keywords": [{"keyword": c, "pos": pos[t]} for c, t in tagged]})
    return out


def keyword_sets(k: int, n: int) -> list[list[str]]:
    path = SHARED / "data" / "commongen" / "commongen.dev.jsonl"
    rng = random.Random(k)
    if path.exists():
        concepts = [
            c.split("_")[0]
            for line in path.read_text().splitlines()
            for c in json.loads(line)["concept_set"].split("#")
        ]
        pool = sorted(set(concepts))
    else:
        pool = FALLBACK_WORDS
    return [rng.sample(pool, k) for _ in range(n)]


def everyday_words(n: int) -> list[str]:
    """The n most frequent words (3+ letters) of CommonGen's training sentences, concepts above excluded."""
    path = SHARED / "data" / "commongen" / "commongen.train.tgt.txt"
    if path.exists():
        counts = collections.Counter(re.findall(r"[a-z]+", path.read_text().lower()))
        words = [w for w, _ in counts.most_common(3 * n) if len(w) > 2]
    else:
        rng = random.Random(0)
        words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(2 * n)]
    return [w for w in words if w not in CONCEPTS][:n]


def timed(spec, tokenizer, **kwargs) -> tuple[float, object]:
    COMPILED.clear()
    started = time.perf_counter()
    dfa = compile_constraint(spec, tokenizer, **kwargs)
    return time.perf_counter() - started, dfa


def keyword_rows(tokenizer, sets: int) -> list[list]:
    rows = []
    for k in range(1, 7):
        times, states, any_states, classes = [], [], [], []
        for words in keyword_sets(k, sets):
            seconds, dfa = timed({"keywords": words}, tokenizer, max_states=8192)
            times.append(seconds)
            states.append(dfa.num_states)
            classes.append(dfa.num_classes)
            any_states.append(
                timed({"keywords": words, "case": "any"}, tokenizer, max_states=8192)[1].num_states
            )
        started = time.perf_counter()
        compile_constraint({"keywords": words, "case": "any"}, tokenizer, max_states=8192)
        cached_us = (time.perf_counter() - started) * 1e6
        rows.append([k, round(statistics.median(times) * 1000, 1), round(max(times) * 1000, 1),
                     int(statistics.median(states)), max(states), int(statistics.median(any_states)),
                     int(statistics.median(classes)), round(cached_us, 1)])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def blocklist_rows(tokenizer) -> list[list]:
    rows = []
    for n in (10, 100, 1000):
        block = everyday_words(n)
        for label, spec in (
            (f"forbidden: {n} words", {"forbidden": block}),
            (f"4 concepts + forbidden: {n} words", {"all": [{"keywords": CONCEPTS}, {"forbidden": block}]}),
        ):
            for mask in (True, False):
                if not mask and n > 10:
                    continue  # one exact product of 100+ words is far above any state cap
                seconds, dfa = timed(spec, tokenizer, blocklist_mask=mask, max_states=8192)
                mode = "mask" if dfa.blocklist is not None else "exact product"
                rows.append([label, mode, round(seconds * 1000, 1), dfa.num_states, dfa.num_classes])
                print(rows[-1], flush=True)
    seconds, dfa = timed({"keywords": CONCEPTS}, tokenizer)
    rows.append(["4 concepts alone", "-", round(seconds * 1000, 1), dfa.num_states, dfa.num_classes])
    return rows


def token_id_rows(tokenizer, sets: int) -> list[list]:
    """The reference system's keyword workload as raw ids: 4 keywords, 2-3 alternatives of 1-3 ids each."""
    rng = random.Random(0)
    vocab = len(tokenizer)
    times, states = [], []
    for _ in range(sets):
        spec = {"all": [{"any": [{"tokens": [rng.randrange(vocab) for _ in range(rng.randint(1, 3))]}
                                 for _ in range(rng.randint(2, 3))]} for _ in range(4)]}  # fmt: skip
        seconds, dfa = timed(spec, tokenizer)
        times.append(seconds)
        states.append(dfa.num_states)
    return [["4 keywords x 2-3 alternatives x 1-3 ids", round(statistics.median(times) * 1000, 1),
             round(max(times) * 1000, 1), int(statistics.median(states)), max(states)]]  # fmt: skip


def commongen_rows(tokenizers: list[tuple[str, object]]) -> list[list]:
    rows = []
    constraints = dev_constraints()
    for name, tokenizer in tokenizers:
        vocab_tables(tokenizer)
        times, states = [], []
        for spec in constraints:
            seconds, dfa = timed(spec, tokenizer, max_states=8192)
            times.append(seconds)
            states.append(dfa.num_states)
        rows.append([name, len(constraints), int(statistics.median(states)), round(statistics.mean(states)),
                     max(states), sum(s > 2048 for s in states), round(statistics.median(times) * 1000, 1),
                     round(max(times) * 1000, 1)])  # fmt: skip
        print(rows[-1], flush=True)
    return rows


SIZED = [  # (name, spec, horizon): the quoted cases, then automata towards 100,000 states
    ("six keywords", {"keywords": ["dog", "frisbee", "catch", "throw", "park", "grass"]}, 32),
    ("coworkers, talk + 28-31 words", {"all": [{"keywords": ["coworkers", "talk"]},
                                              {"word_count": {"min": 28, "max": 31}}]}, 44),
    ("5 keywords + 40-44 words", {"all": [{"keywords": ["dog", "frisbee", "catch", "throw", "park"]},
                                         {"word_count": {"min": 40, "max": 44}}]}, 64),
    ("10 keywords", {"keywords": "dog frisbee catch throw park grass girl ball tree lake".split()}, 32),
    ("11 keywords", {"keywords": "dog frisbee catch throw park grass girl ball tree lake snow".split()}, 32),
]  # fmt: skip


def sized_rows(tokenizer) -> list[list]:
    """Per constraint: compile (CPU seconds, and wall: the machine is shared), feasibility, live pairs, and
    the exact guide's cost at H = 256 and 4096 against the CPU budget (pc_core.guide_budget)."""
    from pc_core.feasibility import Feasibility
    from pc_core.guide_budget import GuideBudget, exact_cost

    budget = GuideBudget.for_device("cpu")
    rows = []
    for name, spec, horizon in SIZED:
        COMPILED.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        dfa = compile_constraint(spec, tokenizer, time_budget_s=600)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        started = time.process_time()
        feasibility = Feasibility(dfa, horizon)
        feasible_s = time.process_time() - started
        costs = []
        for hidden in (256, 4096):
            cost = exact_cost(dfa, feasibility, hidden, 4)
            kind = "exact" if cost.fits(budget) else "factored"
            costs.append(f"{cost.table_bytes / 1e6:,.0f} MB, {cost.flops / 1e9:,.1f} GFLOP: {kind}")
        pairs = feasibility.live_pairs
        rows.append([name, horizon, f"{dfa.num_states:,}", f"{cpu:.2f}", f"{wall:.2f}", f"{feasible_s:.2f}",
                     f"{pairs:,} ({pairs / (dfa.num_states * horizon):.0%})", *costs])  # fmt: skip
    return rows


def sized_main(tokenizer, source: str) -> None:
    from pc_core.guide_budget import GuideBudget

    cpu_budget = GuideBudget.for_device("cpu").describe()
    cpu, wall = time.process_time(), time.perf_counter()
    compile_constraint(SIZED[0][1], tokenizer, time_budget_s=600)  # cold: loads lemminflect's dictionaries
    cold = (time.process_time() - cpu, time.perf_counter() - wall)
    body = [
        "## Automata sized by their guide's cost",
        "",
        f"`python -m benchmarks.constraints --sized`; {source} (V = {len(tokenizer)}); {machine()}. CPU seconds "
        "are this process's (the machine is shared by parallel jobs; wall seconds beside them). Live pairs: "
        "(step, state) pairs that are reachable, can still accept and are not certain, the rows the exact "
        "guide stores (docs/method.md §5.9), with their share of states x horizon. Cost at float32 against "
        f"the CPU budget ({cpu_budget}). The first compile in a process also loads the inflection "
        f"dictionaries: the six-keyword constraint took {cold[0]:.2f} s CPU ({cold[1]:.2f} s wall) cold.",
        "",
        table(
            [
                "constraint",
                "n",
                "states",
                "compile s (CPU)",
                "compile s (wall)",
                "feasibility s (CPU)",
                "live pairs",
                "H = 256",
                "H = 4096",
            ],
            sized_rows(tokenizer),
        ),  # fmt: skip
    ]
    text = "\n".join(body)
    print(text)
    write_section("benchmarks.md", "constraints-sized", text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.constraints")
    parser.add_argument("--sets", type=int, default=10, help="keyword sets per size")
    parser.add_argument("--commongen", action="store_true", help="also compile all CommonGen dev constraints")
    parser.add_argument("--sized", action="store_true",
                        help="only the automata sized by cost (the proxy LM's tokenizer when present)")  # fmt: skip
    args = parser.parse_args()
    if args.sized:
        proxy = SHARED / "models" / "commongen-proxy" / "lm"
        if proxy.exists():
            from transformers import AutoTokenizer

            sized_main(AutoTokenizer.from_pretrained(str(proxy)), "commongen proxy LM's tokenizer")
        else:
            sized_main(*load_tokenizer())
        return
    tokenizer, source = load_tokenizer()
    started = time.perf_counter()
    vocab_tables(tokenizer)
    tables_s = time.perf_counter() - started
    compile_constraint({"keywords": ["warmup"]}, tokenizer)  # loads lemminflect's dictionaries

    body = [
        "## Constraint compilation",
        "",
        f"`python -m benchmarks.constraints --sets {args.sets}{' --commongen' if args.commongen else ''}`; "
        f"{source} (V = {len(tokenizer)}); {machine()}. Per-tokenizer tables (built once, cached): "
        f"{tables_s * 1000:.0f} ms. Every compile below starts from an empty DFA cache.",
        "",
        "### Keywords (CommonGen dev concepts, inflections on, natural case; `case: any` for comparison)",
        "",
        table(
            [
                "keywords",
                "compile ms (median)",
                "compile ms (max)",
                "states (median)",
                "states (max)",
                "states, case any (median)",
                "token classes (median)",
                "cached lookup us",
            ],
            keyword_rows(tokenizer, args.sets),
        ),  # fmt: skip
        "",
        "### Blocklists (the most frequent words of CommonGen's training sentences)",
        "",
        table(
            ["constraint", "blocklist", "compile ms", "states", "token classes"], blocklist_rows(tokenizer)
        ),
        "",
        "### Raw token ids",
        "",
        table(
            ["constraint", "compile ms (median)", "compile ms (max)", "states (median)", "states (max)"],
            token_id_rows(tokenizer, args.sets),
        ),  # fmt: skip
    ]
    if args.commongen and (SHARED / "data" / "commongen").exists():
        tokenizers = [(source, tokenizer)]
        proxy = SHARED / "models" / "commongen-proxy" / "lm"
        if proxy.exists():
            from transformers import AutoTokenizer

            tokenizers.append(
                ("commongen proxy LM (8,192 tokens)", AutoTokenizer.from_pretrained(str(proxy)))
            )
        body += [
            "",
            "### CommonGen dev: every concept set (concepts with their part of speech)",
            "",
            table(
                [
                    "tokenizer",
                    "sets",
                    "states (median)",
                    "states (mean)",
                    "states (max)",
                    "sets > 2048 states",
                    "compile ms (median)",
                    "compile ms (max)",
                ],
                commongen_rows(tokenizers),
            ),  # fmt: skip
        ]
    text = "\n".join(body)
    print(text)
    write_section("benchmarks.md", "constraints", text)


if __name__ == "__main__":
    main()
