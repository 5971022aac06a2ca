"""Compile time and DFA size for 1..6 keywords (inflections on) over a 50,257-token byte-level vocabulary.

    python benchmarks/constraints.py [--sets 10]

Uses ../shared/tokenizers/bpe-50257 and CommonGen concept sets when present; otherwise a synthetic
50,257-token vocabulary and a fixed word list. Writes the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import SHARED, machine, table, write_section  # noqa: E402
from pc_core.constraints import compile_constraint, compiler  # noqa: E402
from pc_core.constraints.vocab import vocab_tables  # noqa: E402

FALLBACK_WORDS = (
    "dog frisbee catch field run boy snow ski mountain cook pan vegetable water drink glass".split()
)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", type=int, default=10, help="keyword sets per size")
    parser.add_argument("--max-keywords", type=int, default=6)
    args = parser.parse_args()
    tokenizer, source = load_tokenizer()
    started = time.perf_counter()
    vocab_tables(tokenizer)
    tables_s = time.perf_counter() - started
    compile_constraint({"keywords": ["warmup"]}, tokenizer)  # loads lemminflect's dictionaries
    rows = []
    for k in range(1, args.max_keywords + 1):
        times, states, classes = [], [], []
        for words in keyword_sets(k, args.sets):
            compiler._CACHE.clear()
            t0 = time.perf_counter()
            dfa = compile_constraint({"keywords": words}, tokenizer, max_states=8192)
            times.append(time.perf_counter() - t0)
            states.append(dfa.num_states)
            classes.append(dfa.num_classes)
        t0 = time.perf_counter()
        compile_constraint({"keywords": words}, tokenizer, max_states=8192)
        cached_us = (time.perf_counter() - t0) * 1e6
        rows.append(
            [
                k,
                round(statistics.median(times) * 1000, 1),
                round(max(times) * 1000, 1),
                int(statistics.median(states)),
                max(states),
                int(statistics.median(classes)),
                round(cached_us, 1),
            ]
        )
        print(rows[-1], flush=True)
    headers = [
        "keywords",
        "compile ms (median)",
        "compile ms (max)",
        "states (median)",
        "states (max)",
        "token classes (median)",
        "cached lookup us",
    ]
    body = (
        "## Constraint compilation\n\n"
        f"`python benchmarks/constraints.py --sets {args.sets}`; {source} (V = {len(tokenizer)}); "
        f"keyword sets of CommonGen dev concepts (inflections on); {machine()}.\n"
        f"Per-tokenizer tables (built once, cached): {tables_s * 1000:.0f} ms.\n\n" + table(headers, rows)
    )
    print(body)
    write_section("benchmarks.md", "constraints", body)


if __name__ == "__main__":
    main()
