"""Interactive text editing: insertion (a suffix follows the span) and continuation with keyword and word-count
constraints, on the 400 published cases of ../shared/data/editing/ (README there).

    python -m benchmarks.editing --per-category 15 --threads 1
    python -m benchmarks.editing --all --threads 1          all 400 cases, categories interleaved
    python -m benchmarks.editing --all --score-only         the report from what a (partial) run cached

Every system uses the same LM and decoding budget (beams, horizon); the systems take each case in turn, and
outputs are cached per system under --work (an interrupted run resumes; --score-only reports the cases every
system has done). The table goes to docs/quality.md between `<!-- bench:editing -->` markers.

  unconstrained  beam search continues the prompt freely; the span ends at EOS or when its token budget (the
                 horizon minus the tokens of the suffix's first word) runs out; the suffix is appended
  mask-only      the same, with EOS masked until the constraint holds on the span (no lookahead): what a
                 mask-based decoder can express
  pcgen          HMM-guided beam search with the whole suffix (pc_core.infill): the LM writes span + the
                 suffix's first word (the junction), the rest is attached; the guide computes P(constraint on
                 the span, the junction ends here and the whole suffix follows | prefix, token) exactly

Cases. The constraint is every keyword phrase (inflections on, natural case) and the word range of the span;
every span must have at least one word (cases without a range get min 1). The prompt is the prefix with its
trailing spaces moved into the span, truncated to its last tokens (the proxy LM's context is 64 tokens:
prompt + horizon must fit, and the same tokens seed the HMM's forward vector). The suffix is the case's whole
suffix (--suffix-words N: its first N words instead), with a space in front when it starts with a word
character (the span then ends without its trailing space, as the proxy LM writes words as " word" tokens).

Scores. satisfied: keywords and word count, by the independent text checker on the span alone. LM
log-likelihood per token: each system's span (and span + suffix, for insertion) re-tokenised and scored by the
same LM after the same prompt, so the systems are measured alike; a text longer than the 64-token context is
scored in windows (each token after at least 32 tokens of context). Seconds per case (pcgen: compile,
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

from benchmarks._report import SHARED, command, load_proxy_models, machine, table, write_section
from benchmarks.commongen import MaskOnly

CONTEXT = 64  # the proxy LM's context (n_positions)
NAMES = {"dfa_ms": "compile", "precompute_ms": "precompute", "decode_ms": "decode"}  # pcgen's timings, in s
CATEGORIES = [f"K{k}L{length}I{i}" for k in (0, 1) for length in (0, 1) for i in (0, 1)]


def load_cases(path: Path, per_category: int | None) -> list[dict]:
    """The first `per_category` cases of each category, or all; categories interleaved (a partial run
    covers every category)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if per_category is None:
        by_category: dict[str, list[dict]] = {}
        for row in rows:
            by_category.setdefault(row["category"], []).append(row)
        columns = list(by_category.values())
        return [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
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


def suffix_of(row: dict, words: int | None) -> str | None:
    """The case's suffix (None for continuation), all of it or its first `words` words, with a leading space
    when it starts with a word character."""
    import re

    text = row["suffix"]
    if not text.strip():
        return None
    ends = [m.end() for m in re.finditer(r"\w+", text)]
    cut = text[: ends[min(words, len(ends)) - 1]] if ends and words else text
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
    budget = case["horizon"] - case["junction_tokens"]
    processors = LogitsProcessorList()
    if mask_only:
        from pc_core.errors import ConstraintError

        try:
            dfa = compile_constraint(
                case["constraint"], tokenizer, max_states=case["max_states"], time_budget_s=600
            )
        except ConstraintError as err:  # the mask needs the automaton too: not served
            return {"text": None, "error": type(err).__name__, "path": err.path, "message": err.message}
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
            "finish_reason": seq.finish_reason, "dfa_states": out.dfa_states, "ranking": out.ranking,
            **{NAMES[k]: v / 1000 for k, v in out.timings.items() if k in NAMES}}  # fmt: skip


# ---------------------------------------------------------------------------------------------- scores


def log_likelihood(lm, tokenizer, prompt: list[int], text: str) -> tuple[float, int]:
    """(sum of the LM's log-probabilities of `text`'s tokens after `prompt`, number of tokens). Beyond the
    context, in windows of CONTEXT tokens: each scores its last CONTEXT / 2 tokens after the ones before."""
    import torch

    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        return 0.0, 0
    tokens = list(prompt) + ids
    total, done, stride = 0.0, len(prompt), CONTEXT // 2
    while done < len(tokens):
        end = min(len(tokens), max(done + stride, CONTEXT))
        start = max(0, end - CONTEXT)
        window = torch.tensor([tokens[start:end]])
        with torch.no_grad():
            logp = torch.log_softmax(lm(window).logits[0, :-1].float(), dim=-1)  # (L - 1, V)
        first = max(done, start + 1)  # the first token this window scores (it needs one before it)
        targets = torch.tensor(tokens[first:end])[:, None]
        total += float(logp[first - start - 1 : end - start - 1].gather(1, targets).sum())
        done = end
    return total, len(ids)


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


def run_systems(systems: dict, cases: list[dict], work: Path, score_only: bool) -> dict[str, list[dict]]:
    """Outputs per system, cached in work/<name>.jsonl (an interrupted run resumes). Each case is run by every
    system before the next, so any prefix of the run compares the systems on the same cases; --score-only
    runs nothing and returns the cases every system has done."""
    done = {}
    for name in systems:
        path = work / f"{name}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        if lines and not lines[-1].endswith("}"):  # a line the running benchmark is still writing
            lines = lines[:-1]
        done[name] = [json.loads(line) for line in lines]
    handles = {name: (work / f"{name}.jsonl").open("a") for name in systems}
    try:
        for i in range(0 if score_only else len(cases)):
            for name, fn in systems.items():
                if len(done[name]) > i:
                    continue
                started = time.perf_counter()
                result = fn(cases[i])
                result["seconds"] = time.perf_counter() - started
                result["id"] = cases[i]["row"]["id"]
                done[name].append(result)
                handles[name].write(json.dumps(result) + "\n")
                handles[name].flush()
                print(f"{name} {i + 1}/{len(cases)} {result['seconds']:.1f}s {str(result.get('text'))[:60]!r}",
                      flush=True)  # fmt: skip
    finally:
        for fh in handles.values():
            fh.close()
    common = min(len(v) for v in done.values())
    return {name: outs[:common] for name, outs in done.items()}


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
    parser.add_argument("--all", action="store_true", help="all cases (categories interleaved)")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument(
        "--horizon", type=int, default=48, help="max_new_tokens: span + the suffix's first word"
    )
    parser.add_argument("--suffix-words", type=int, default=None, help="cut the suffix to N words")
    parser.add_argument("--max-states", type=int, default=16384)
    parser.add_argument(
        "--time-budget", type=float, default=300.0, help="compile time budget per case, seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--systems", nargs="+", default=["pcgen", "unconstrained", "mask-only"])
    parser.add_argument("--score-only", action="store_true", help="report what the work folder holds")
    parser.add_argument("--no-report", dest="write", action="store_false")
    args = parser.parse_args()
    if not args.data.exists() or not Path(args.lm).exists() or not Path(args.hmm).exists():
        print(f"editing data or proxy models not found ({args.data}, {args.lm}, {args.hmm}); nothing to do")
        return
    from pc_core.infill import split_suffix

    lm, tokenizer, hmm = load_proxy_models(args.lm, args.hmm, args.threads)
    rows = load_cases(args.data, None if args.all else args.per_category)
    cases = []
    for row in rows:
        suffix = suffix_of(row, args.suffix_words)
        junction = split_suffix(suffix)[0] if suffix else ""
        prompt = prompt_ids(tokenizer, row, CONTEXT - args.horizon)
        cases.append({"row": row, "constraint": constraint_of(row), "suffix": suffix, "prompt": prompt,
                      "junction_tokens": len(tokenizer.encode(junction, add_special_tokens=False)),
                      "horizon": args.horizon, "max_states": args.max_states,
                      "time_budget_s": args.time_budget})  # fmt: skip
    words = "all" if args.suffix_words is None else args.suffix_words
    work = args.work / f"b{args.beams}-n{args.horizon}-s{words}-c{len(cases)}"
    work.mkdir(parents=True, exist_ok=True)
    systems = {
        "unconstrained": lambda c: run_free(lm, tokenizer, c, args.beams, False),
        "mask-only": lambda c: run_free(lm, tokenizer, c, args.beams, True),
        "pcgen": lambda c: run_pcgen(lm, tokenizer, hmm, c, args.beams),
    }
    outputs = run_systems({name: systems[name] for name in args.systems}, cases, work, args.score_only)
    done = len(next(iter(outputs.values())))
    results = score(lm, tokenizer, cases[:done], outputs, work)
    print(json.dumps(results["summary"], indent=1))
    if args.write:
        write_report(args, cases, done, results, lm)


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile by the nearest rank (p50, p95), nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _scores(lm, tokenizer, case: dict, text: str) -> dict:  # noqa: ANN001
    ll_span, n_span = log_likelihood(lm, tokenizer, case["prompt"], text)
    ll_full, n_full = log_likelihood(lm, tokenizer, case["prompt"], text + (case["suffix"] or ""))
    return {**judge(case, text), "ll_span": ll_span, "n_span": n_span, "ll_full": ll_full, "n_full": n_full}


def score(lm, tokenizer, cases: list[dict], outputs: dict[str, list[dict]], work: Path) -> dict:  # noqa: ANN001
    """Per system, over every case (a case pcgen refuses counts as not satisfied for pcgen): served %,
    satisfied % (keywords, word count) by the independent checker, LL/token of span and span + suffix,
    seconds per case p50 / p95 / max; per category; pcgen's timings, rankings and refusals."""
    scored_path = work / "scores.json"
    cached = json.loads(scored_path.read_text()) if scored_path.exists() else {}
    per_case: dict[str, list[dict | None]] = {}
    for name, outs in outputs.items():
        rows = []
        for i, (case, out) in enumerate(zip(cases, outs, strict=True)):
            key = f"{name}/{i}/{out.get('text')}"
            if key not in cached:
                cached[key] = None if out.get("text") is None else _scores(lm, tokenizer, case, out["text"])
            rows.append(cached[key])
        per_case[name] = rows
    scored_path.write_text(json.dumps(cached))
    summary, by_category = {}, {}
    for name, rows in per_case.items():
        served = [(c, r, o) for c, r, o in zip(cases, rows, outputs[name]) if r is not None]
        insertion = [r for c, r, _ in served if c["suffix"]]
        seconds = [o["seconds"] for o in outputs[name]]
        summary[name] = {
            "cases": len(cases),
            "served %": 100 * len(served) / max(1, len(cases)),
            "satisfied %": 100 * sum(r["satisfied"] for _, r, _ in served) / max(1, len(cases)),
            "keywords %": 100 * sum(r["keywords"] for _, r, _ in served) / max(1, len(cases)),
            "word count %": 100 * sum(r["word_count"] for _, r, _ in served) / max(1, len(cases)),
            "LL/token span": sum(r["ll_span"] for _, r, _ in served) / max(1, sum(r["n_span"] for _, r, _ in served)),
            "LL/token span+suffix (insertion)": sum(r["ll_full"] for r in insertion)
            / max(1, sum(r["n_full"] for r in insertion)),
            "mean words": _mean([len(__import__("re").findall(r"\w+", o["text"])) for _, _, o in served]),
            "s p50": _quantile(seconds, 0.5),
            "s p95": _quantile(seconds, 0.95),
            "s max": max(seconds, default=float("nan")),
        }  # fmt: skip
        by_category[name] = {
            cat: 100 * _mean([bool(r and r["satisfied"]) for c, r in zip(cases, rows) if c["row"]["category"] == cat])
            for cat in CATEGORIES
        }  # fmt: skip
    timing, rankings = {}, Counter()
    if "pcgen" in outputs:
        ok = [o for o in outputs["pcgen"] if o.get("error") is None]
        for key in ("compile", "precompute", "decode", "seconds"):
            values = [o[key] for o in ok]
            timing[key] = (_mean(values), max(values) if values else float("nan"))
        timing["dfa_states"] = (
            _mean([o["dfa_states"] for o in ok]),
            max((o["dfa_states"] for o in ok), default=0),
        )
        rankings = Counter(o.get("ranking") for o in ok if o.get("ranking"))
    misfits = [
        (c["row"]["category"], c["row"]["word_count"], len(c["row"]["keywords"]), o["error"], o["path"], o["message"])
        for c, o in zip(cases, outputs.get("pcgen", []))
        if o.get("error") is not None
    ]  # fmt: skip
    return {"summary": summary, "by_category": by_category, "timing": timing, "misfits": misfits,
            "rankings": dict(rankings)}  # fmt: skip


def write_report(args, cases: list[dict], done: int, results: dict, lm) -> None:  # noqa: ANN001
    summary, by_category, timing, misfits = (
        results[k] for k in ("summary", "by_category", "timing", "misfits")
    )
    counts = Counter(c["row"]["category"] for c in cases[:done])
    n_params = sum(p.numel() for p in lm.parameters())
    fmt = lambda v: (  # noqa: E731
        "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 3 if abs(v) < 10 else 1)
    )
    headers = ["system", "cases", "served %", "satisfied %", "keywords %", "word count %", "LL/token span",
               "LL/token span+suffix", "words", "s p50", "s p95", "s max"]  # fmt: skip
    rows = [
        [name, s["cases"], fmt(s["served %"]), fmt(s["satisfied %"]), fmt(s["keywords %"]), fmt(s["word count %"]),
         fmt(s["LL/token span"]), fmt(s["LL/token span+suffix (insertion)"]), fmt(s["mean words"]),
         fmt(s["s p50"]), fmt(s["s p95"]), fmt(s["s max"])]
        for name, s in summary.items()
    ]  # fmt: skip
    category_rows = [
        [cat, counts[cat], *[fmt(by_category[name][cat]) for name in summary]] for cat in CATEGORIES
    ]
    selection = (
        f"all {len(cases)} cases" if args.all else f"the first {args.per_category} cases of each category"
    )
    partial = "" if done == len(cases) else (
        f" **Partial run: {done} of the {len(cases)} cases (categories interleaved) were done when it was "
        "reported; the numbers cover those.**"
    )  # fmt: skip
    suffix_words = "the whole suffix" if args.suffix_words is None else f"its first {args.suffix_words} words"
    lines = [
        "## Interactive text editing (insertion and continuation, proxy LM)",
        "",
        f"Generated by `{command()}` on {machine()}.{partial}",
        "",
        f"- Data: `../shared/data/editing/editing.jsonl`, {selection} ({done} run; K = keywords, L = word range, "
        "I1 = insertion, I0 = continuation).",
        "- Constraint: every keyword phrase (inflections, natural case) and the word range of the span, judged on "
        "the span by the independent text checker; at least one word where no range is given.",
        f"- LM: the CommonGen proxy (`{args.lm}`, GPT-2 architecture, {n_params / 1e6:.1f} M parameters, context "
        f"{CONTEXT} tokens) and its H = 256 HMM (`{args.hmm}`). It was chosen because it is the only LM with a "
        "distilled HMM on this machine; it was trained on CommonGen sentences, so story passages are far from its "
        "training text and its spans are poor prose whatever the decoder. The numbers compare decoders on one LM, "
        "not with the published systems.",
        f"- Suffix: {suffix_words} (insertion suffixes: median 1,572 characters, longest 3,354), a space in front "
        "when it starts with a word character. pcgen: the HMM conditions on all of it (one backward pass over its "
        "tokens), the LM writes the span and the suffix's first word (the junction, any tokenisation), the rest "
        "is attached (pc_core.infill); beams are ranked by span + junction, as prompt + span + suffix never fit "
        f"the 64-token context (rankings: {results['rankings'] or 'none'}).",
        f"- Truncation: the prompt is the prefix (trailing spaces moved into the span) cut to its last "
        f"{CONTEXT - args.horizon} tokens, so that prompt + horizon ({args.horizon} tokens: span and junction) fit "
        "the context; the same tokens seed the HMM's forward vector (`hmm_context_tokens`).",
        f"- Budget (every system): {args.beams} beams, max_new_tokens = {args.horizon} for span + junction. "
        "Baselines: the span gets the horizon minus the junction's tokens, ends at EOS or there, and the suffix "
        "is appended; mask-only forbids EOS until the constraint holds on the span. pcgen's compile limits: "
        f"{args.max_states} states, {args.time_budget:g} s.",
        "- served: outputs returned (pcgen refuses a request it cannot compile or satisfy within the horizon); "
        "satisfied, keywords, word count: % of all cases (a refusal counts as not satisfied), by the independent "
        "checker on the span. LL/token: each span, and span + whole suffix for insertion cases, re-tokenised and "
        "scored by the LM after the same prompt (beyond the context in windows: each token after at least 32 "
        "tokens). Seconds per case: wall time, one torch thread, on a machine shared with other jobs.",
        "",
        table(headers, rows),
        "",
        "Satisfied (%) per category:",
        "",
        table(["category", "cases", *summary], category_rows),
    ]
    if timing:
        lines += ["", "pcgen time per served case, mean (max): "
                  + ", ".join(f"{'total' if k == 'seconds' else k} {fmt(v[0])} s ({fmt(v[1])} s)"
                              for k, v in timing.items() if k != "dfa_states")
                  + f"; automaton states {fmt(timing['dfa_states'][0])} (max {timing['dfa_states'][1]})."]  # fmt: skip
    lines += ["", f"Cases pcgen refused: {len(misfits)}."]
    for category, word_count, keywords, error, path, message in misfits:
        lines.append(
            f"- {category}, word range {word_count}, {keywords} keyword(s): {error} on `{path}`: {message}"
        )
    write_section("quality.md", "editing", "\n".join(lines))


if __name__ == "__main__":
    main()
