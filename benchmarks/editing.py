"""Interactive text editing: insertion (a suffix follows the span) and continuation with keyword and word-count
constraints, on the 400 published cases of ../shared/data/editing/ (README there).

    python -m benchmarks.editing --per-category 15 --threads 1

Every system uses the same LM and decoding budget (beams, horizon); outputs are cached per system under
--work (an interrupted run resumes) and the table goes to docs/quality.md between `<!-- bench:editing -->`
markers.

  unconstrained  beam search continues the prompt freely; the span ends at EOS or when its token budget (the
                 horizon minus the suffix's tokens) runs out; the suffix is appended
  mask-only      the same, with EOS masked until the constraint holds on the span (no lookahead): what a
                 mask-based decoder can express
  pcgen          HMM-guided beam search with suffix=...: the LM writes span + suffix, the guide computes
                 P(constraint on the span and the suffix follows | prefix, token) exactly

Cases. The constraint is every keyword phrase (inflections on, natural case) and the word range of the span;
every span must have at least one word (cases without a range get min 1). The prompt is the prefix with its
trailing spaces moved into the span, truncated to its last tokens (the proxy LM's context is 64 tokens:
prompt + horizon must fit, and the same tokens seed the HMM's forward vector). The suffix is the start of the
case's suffix, its first --suffix-words words, with a space in front when it starts with a word character (the
span then ends without its trailing space, as the proxy LM writes words as " word" tokens).

Scores. satisfied: keywords and word count, by the independent text checker on the span alone. LM
log-likelihood per token: each system's span (and span + suffix, for insertion) re-tokenised and scored by the
same LM after the same prompt, so the systems are measured alike. Seconds per case (pcgen: compile,
precompute, decode).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import Counter
from pathlib import Path

from benchmarks._report import SHARED, command, machine, table, write_section
from benchmarks.commongen import MaskOnly

CONTEXT = 64  # the proxy LM's context (n_positions)
NAMES = {"dfa_ms": "compile", "precompute_ms": "precompute", "decode_ms": "decode"}  # pcgen's timings, in s
CATEGORIES = [f"K{k}L{length}I{i}" for k in (0, 1) for length in (0, 1) for i in (0, 1)]


def load_cases(path: Path, per_category: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if per_category is None:
        return rows
    taken: Counter = Counter()
    out = []
    for row in rows:
        if taken[row["category"]] < per_category:
            taken[row["category"]] += 1
            out.append(row)
    return out


def constraint_of(row: dict) -> dict:
    """Every keyword phrase, and the word range (at least one word)."""
    low, high = row["word_count"] if row["word_count"] else (1, None)
    parts: list[dict] = [{"word_count": {"min": max(1, low), "max": high}}]
    if row["keywords"]:
        parts.insert(0, {"keywords": row["keywords"]})
    return {"all": parts}


def suffix_of(row: dict, words: int) -> str | None:
    """The first `words` words of the case's suffix (None for continuation), with a leading space when it
    starts with a word character."""
    import re

    text = row["suffix"]
    if not text.strip():
        return None
    ends = [m.end() for m in re.finditer(r"\w+", text)]
    cut = text[: ends[min(words, len(ends)) - 1]] if ends else text
    cut = cut[:200]
    return " " + cut if re.match(r"\w", cut) else cut


def prompt_ids(tokenizer, row: dict, length: int) -> list[int]:
    """The prefix without trailing spaces, its last `length` tokens."""
    ids = tokenizer.encode(row["prefix"].rstrip(" "), add_special_tokens=False)
    return ids[-length:]


# ---------------------------------------------------------------------------------------------- systems


def run_free(lm, tokenizer, case: dict, beams: int, mask_only: bool) -> dict:
    """Beam search with the LM alone (or EOS masked until the constraint holds); the suffix appended."""
    import torch
    from transformers import LogitsProcessorList

    from pc_core import compile_constraint

    ids = torch.tensor([case["prompt"]])
    budget = case["horizon"] - case["suffix_tokens"]
    processors = LogitsProcessorList()
    if mask_only:
        dfa = compile_constraint(
            case["constraint"], tokenizer, max_states=case["max_states"], time_budget_s=600
        )
        processors.append(MaskOnly(dfa, ids.shape[1], tokenizer.eos_token_id))
    with torch.no_grad():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                          max_new_tokens=budget, early_stopping=True, logits_processor=processors,
                          pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return {"text": tokenizer.decode(new, skip_special_tokens=True)}


def run_pcgen(lm, tokenizer, hmm, case: dict, beams: int) -> dict:
    from pc_core import generate
    from pc_core.errors import ConstraintError

    try:
        out = generate(lm, tokenizer, hmm, case["constraint"], prompt=case["prompt"], suffix=case["suffix"],
                       max_new_tokens=case["horizon"], num_beams=beams, hmm_context_tokens=len(case["prompt"]),
                       max_states=case["max_states"], time_budget_s=case["time_budget_s"])  # fmt: skip
    except ConstraintError as err:  # does not fit the horizon, or too large an automaton
        return {"text": None, "error": type(err).__name__, "path": err.path, "message": err.message}
    seq = out.sequences[0]
    return {"text": seq.text, "full_text": seq.full_text, "satisfied_by_pcgen": seq.constraint_satisfied,
            "finish_reason": seq.finish_reason, "dfa_states": out.dfa_states,
            **{NAMES[k]: v / 1000 for k, v in out.timings.items() if k in NAMES}}  # fmt: skip


# ---------------------------------------------------------------------------------------------- scores


def log_likelihood(lm, tokenizer, prompt: list[int], text: str) -> tuple[float, int]:
    """(sum of the LM's log-probabilities of `text`'s tokens after `prompt`, number of tokens)."""
    import torch

    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        return 0.0, 0
    prompt = prompt[-max(1, CONTEXT - len(ids)) :]
    ids = ids[: CONTEXT - len(prompt)]
    full = torch.tensor([prompt + ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(full).logits[0, :-1].float(), dim=-1)
    picked = logp[len(prompt) - 1 :].gather(1, torch.tensor(ids)[:, None])
    return float(picked.sum()), len(ids)


def judge(case: dict, text: str) -> dict:
    from pc_core import check_text

    low, high = case["row"]["word_count"] or (1, None)
    return {
        "satisfied": check_text(case["constraint"], text),
        "keywords": check_text({"keywords": case["row"]["keywords"]}, text)
        if case["row"]["keywords"]
        else True,
        "word_count": check_text({"word_count": {"min": max(1, low), "max": high}}, text),
    }


# ---------------------------------------------------------------------------------------------- driver


def run_system(name: str, fn, cases: list[dict], work: Path) -> list[dict]:  # noqa: ANN001
    """Outputs per case, cached in work/<name>.jsonl (an interrupted run resumes)."""
    path = work / f"{name}.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    with path.open("a") as fh:
        for i in range(len(done), len(cases)):
            started = time.perf_counter()
            result = fn(cases[i])
            result["seconds"] = time.perf_counter() - started
            result["id"] = cases[i]["row"]["id"]
            done.append(result)
            fh.write(json.dumps(result) + "\n")
            fh.flush()
            print(
                f"{name} {i + 1}/{len(cases)} {result['seconds']:.1f}s {str(result.get('text'))[:70]!r}",
                flush=True,
            )
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.editing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = SHARED / "models" / "commongen-proxy"
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "editing" / "editing.jsonl")
    parser.add_argument("--lm", default=str(models / "lm"))
    parser.add_argument("--hmm", default=str(models / "hmm-256"))
    parser.add_argument("--work", type=Path, default=Path("runs/editing"))
    parser.add_argument(
        "--per-category", type=int, default=15, help="first N cases of each of the 8 categories"
    )
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--horizon", type=int, default=48, help="max_new_tokens: span + suffix tokens")
    parser.add_argument("--suffix-words", type=int, default=3)
    parser.add_argument("--max-states", type=int, default=16384)
    parser.add_argument(
        "--time-budget", type=float, default=300.0, help="compile time budget per case, seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--systems", nargs="+", default=["unconstrained", "mask-only", "pcgen"])
    parser.add_argument("--no-report", dest="write", action="store_false")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.lm).exists() or not Path(args.hmm).exists():
        print(f"editing data or proxy models not found ({args.data}, {args.lm}, {args.hmm}); nothing to do")
        return
    import torch

    from pc_core.hmm import HMM
    from pc_core.lm import load_lm

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, tokenizer = load_lm(args.lm, device="cpu", dtype="float32")
    hmm = HMM.load(args.hmm, device="cpu")
    rows = load_cases(args.data, args.per_category)
    cases = []
    for row in rows:
        suffix = suffix_of(row, args.suffix_words)
        prompt = prompt_ids(tokenizer, row, CONTEXT - args.horizon)
        cases.append({"row": row, "constraint": constraint_of(row), "suffix": suffix, "prompt": prompt,
                      "suffix_tokens": len(tokenizer.encode(suffix, add_special_tokens=False)) if suffix else 0,
                      "horizon": args.horizon, "max_states": args.max_states,
                      "time_budget_s": args.time_budget})  # fmt: skip
    work = args.work / f"b{args.beams}-n{args.horizon}-s{args.suffix_words}-c{len(cases)}"
    work.mkdir(parents=True, exist_ok=True)
    systems = {
        "unconstrained": lambda c: run_free(lm, tokenizer, c, args.beams, False),
        "mask-only": lambda c: run_free(lm, tokenizer, c, args.beams, True),
        "pcgen": lambda c: run_pcgen(lm, tokenizer, hmm, c, args.beams),
    }
    outputs = {name: run_system(name, systems[name], cases, work) for name in args.systems}
    results = score(lm, tokenizer, cases, outputs, work)
    print(json.dumps(results["summary"], indent=1))
    if args.write:
        write_report(args, cases, results, lm)


def score(lm, tokenizer, cases: list[dict], outputs: dict[str, list[dict]], work: Path) -> dict:  # noqa: ANN001
    """Per system: satisfaction over the cases that fit pcgen's horizon (and over all), log-likelihoods,
    seconds; per category; pcgen's timings and the cases that do not fit."""
    fits = [o.get("error") is None for o in outputs.get("pcgen", [{}] * len(cases))]
    scored_path = work / "scores.json"
    cached = json.loads(scored_path.read_text()) if scored_path.exists() else {}
    per_case: dict[str, list[dict]] = {}
    for name, outs in outputs.items():
        rows = []
        for i, (case, out) in enumerate(zip(cases, outs, strict=True)):
            key = f"{name}/{i}/{out.get('text')}"
            if key not in cached:
                if out.get("text") is None:
                    cached[key] = None
                else:
                    text = out["text"]
                    ll_span, n_span = log_likelihood(lm, tokenizer, case["prompt"], text)
                    full = text + (case["suffix"] or "")
                    ll_full, n_full = log_likelihood(lm, tokenizer, case["prompt"], full)
                    cached[key] = {**judge(case, text), "ll_span": ll_span, "n_span": n_span, "ll_full": ll_full,
                                   "n_full": n_full}  # fmt: skip
            rows.append(cached[key])
        per_case[name] = rows
    scored_path.write_text(json.dumps(cached))

    def mean(values: list[float]) -> float:
        return statistics.mean(values) if values else float("nan")

    summary, by_category = {}, {}
    for name, rows in per_case.items():
        done = [(c, r, o) for c, r, o, f in zip(cases, rows, outputs[name], fits) if f and r is not None]
        everything = [r for r in rows if r is not None]
        insertion = [r for c, r, _ in done if c["suffix"]]
        summary[name] = {
            "cases": len(done),
            "satisfied %": 100 * mean([r["satisfied"] for _, r, _ in done]),
            "keywords %": 100 * mean([r["keywords"] for _, r, _ in done]),
            "word count %": 100 * mean([r["word_count"] for _, r, _ in done]),
            "satisfied % (all cases)": 100 * mean([r["satisfied"] for r in everything])
            if name != "pcgen"
            else None,
            "LL/token span": sum(r["ll_span"] for _, r, _ in done)
            / max(1, sum(r["n_span"] for _, r, _ in done)),
            "LL/token span+suffix (insertion)": sum(r["ll_full"] for r in insertion)
            / max(1, sum(r["n_full"] for r in insertion)),
            "mean words": mean([len(__import__("re").findall(r"\w+", o["text"])) for _, _, o in done]),
            "s / case": mean([o["seconds"] for _, _, o in done]),
        }
        by_category[name] = {
            cat: 100 * mean([r["satisfied"] for c, r, _ in done if c["row"]["category"] == cat])
            for cat in CATEGORIES
        }
    timing = {}
    if "pcgen" in outputs:
        ok = [o for o in outputs["pcgen"] if o.get("error") is None]
        for key in ("compile", "precompute", "decode", "seconds"):
            values = [o[key] for o in ok]
            timing[key] = (mean(values), max(values) if values else float("nan"))
        timing["dfa_states"] = (
            mean([o["dfa_states"] for o in ok]),
            max((o["dfa_states"] for o in ok), default=0),
        )
    misfits = [
        (
            c["row"]["category"],
            c["row"]["word_count"],
            len(c["row"]["keywords"]),
            o["error"],
            o["path"],
            o["message"],
        )
        for c, o in zip(cases, outputs.get("pcgen", []))
        if o.get("error") is not None
    ]
    return {"summary": summary, "by_category": by_category, "timing": timing, "misfits": misfits}


def write_report(args, cases: list[dict], results: dict, lm) -> None:  # noqa: ANN001
    summary, by_category, timing, misfits = (
        results[k] for k in ("summary", "by_category", "timing", "misfits")
    )
    counts = Counter(c["row"]["category"] for c in cases)
    n_params = sum(p.numel() for p in lm.parameters())
    fmt = lambda v: (
        "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 3 if abs(v) < 10 else 1)
    )  # noqa: E731
    headers = ["system", "cases", "satisfied %", "keywords %", "word count %", "LL/token span",
               "LL/token span+suffix", "words", "s / case"]  # fmt: skip
    rows = [
        [name, s["cases"], fmt(s["satisfied %"]), fmt(s["keywords %"]), fmt(s["word count %"]), fmt(s["LL/token span"]),
         fmt(s["LL/token span+suffix (insertion)"]), fmt(s["mean words"]), fmt(s["s / case"])]
        for name, s in summary.items()
    ]  # fmt: skip
    category_rows = [
        [cat, counts[cat], *[fmt(by_category[name][cat]) for name in summary]] for cat in CATEGORIES
    ]
    lines = [
        "## Interactive text editing (insertion and continuation, proxy LM)",
        "",
        f"Generated by `{command()}` on {machine()}.",
        "",
        f"- Data: `../shared/data/editing/editing.jsonl`, the first {args.per_category} cases of each of the 8 "
        f"categories ({len(cases)} cases; K = keywords, L = word range, I1 = insertion, I0 = continuation).",
        "- Constraint: every keyword phrase (inflections, natural case) and the word range of the span, judged on "
        "the span by the independent text checker; at least one word where no range is given.",
        f"- LM: the CommonGen proxy (`{args.lm}`, GPT-2 architecture, {n_params / 1e6:.1f} M parameters, context "
        f"{CONTEXT} tokens) and its H = 256 HMM (`{args.hmm}`). It was chosen because it is the only LM with a "
        "distilled HMM on this machine (GPT-2 Large, TULU2 and their HMMs cannot be downloaded here); it was trained "
        "on CommonGen sentences, so story passages are far from its training text and its spans are poor prose "
        "whatever the decoder. The numbers compare decoders on one LM, not with the published systems.",
        f"- Truncation: the prompt is the prefix (trailing spaces moved into the span) cut to its last "
        f"{CONTEXT - args.horizon} tokens, so that prompt + horizon ({args.horizon} tokens, span and suffix) fit "
        "the 64-token context; the same tokens seed the HMM's forward vector (`hmm_context_tokens`). The suffix is "
        f"the first {args.suffix_words} words of the case's suffix (a space in front when it starts with a word "
        "character; the full suffixes average 839 characters, far beyond the context).",
        f"- Budget (every system): {args.beams} beams. pcgen: max_new_tokens = {args.horizon} for span + suffix, "
        f"the LM writes the suffix too. Baselines: the span gets the horizon minus the suffix's tokens, ends at EOS "
        "or there, and the suffix is appended; mask-only forbids EOS until the constraint holds on the span.",
        "- LL/token: each span (and span + suffix for insertion cases) re-tokenised and scored by the LM after the "
        "same prompt. s / case: wall time, one torch thread.",
        "",
        table(headers, rows),
        "",
        "Satisfaction (%) per category, on the cases that fit the horizon:",
        "",
        table(["category", "cases", *summary], category_rows),
    ]
    if timing:
        lines += ["", "pcgen time per case, mean (max): "
                  + ", ".join(f"{'total' if k == 'seconds' else k} {fmt(v[0])} s ({fmt(v[1])} s)"
                              for k, v in timing.items() if k != "dfa_states")
                  + f"; automaton states {fmt(timing['dfa_states'][0])} (max {timing['dfa_states'][1]})."]  # fmt: skip
    lines += [
        "",
        f"Cases that do not fit the horizon (pcgen refuses them before decoding; excluded above): {len(misfits)}.",
    ]
    for category, word_count, keywords, error, path, message in misfits:
        lines.append(
            f"- {category}, word range {word_count}, {keywords} keyword(s): {error} on `{path}`: {message}"
        )
    write_section("quality.md", "editing", "\n".join(lines))


if __name__ == "__main__":
    main()
