"""CommonGen quality evaluation: constraint satisfaction and fluency of HMM-guided decoding vs baselines.

    python -m benchmarks.commongen --lm runs/commongen/lm --hmm runs/commongen/hmm-256 runs/commongen/hmm-1024

Reads the dev split (993 concept sets) from ../shared/data/commongen/ (or --data). For every concept set the
constraint is every concept with the inflections of its CommonGen part of speech (`field_N` ->
{"keyword": "field", "pos": "noun"}; natural case), the prompt is the proxy LM's training
format "c1 c2 c3 =" and every system decodes with the same LM and the same budget (beams, max_new_tokens):
  unconstrained  transformers beam search with the concepts in the prompt
  mask-only      the same beam search, EOS forbidden until every concept appears (no lookahead): what
                 mask-based decoders (Outlines, XGrammar, vLLM guided decoding) can express
  pcgen-H<n>     HMM-guided beam search (pc_core.generate), one row per HMM given
  constrained-beam  transformers' constrained beam search (`force_words_ids`), which transformers 5 removed:
                 benchmarks/commongen_cbs.py produces it in a transformers 4.x environment; its cached
                 outputs are scored here when complete
Scores: satisfaction by the independent text checker (and by NeuroLogic's surface forms), lemma coverage,
BLEU-4 (sacrebleu), ROUGE-L (rouge-score), CIDEr (pycocoevalcap), time per example. Outputs are cached
per system under --work; the table goes to docs/quality.md (--report).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._report import DOCS, SHARED, command, machine, table
from benchmarks.proxy_lm import prompt_for

POS = {"N": "noun", "V": "verb", "A": "adj"}


def load_dev(data: Path, limit: int | None = None) -> list[dict]:
    rows = []
    forms = (data / "dev.constraint.json").read_text().splitlines()
    for line, form in zip((data / "commongen.dev.jsonl").read_text().splitlines(), forms, strict=True):
        item = json.loads(line)
        tagged = [c.split("_") for c in item["concept_set"].split("#")]
        concepts = [c for c, _ in tagged]
        constraint = {"keywords": [{"keyword": c, "pos": POS[tag]} for c, tag in tagged]}
        rows.append(
            {"concepts": concepts, "constraint": constraint, "refs": item["scene"], "forms": json.loads(form)}
        )
    return rows[:limit] if limit else rows


# ---------------------------------------------------------------------------------------------- systems


def prompt_ids(tokenizer, concepts: list[str], template: str | None = None) -> list[int]:
    """EOS + the prompt text: by default "c1 c2 c3 =", the proxy LM's training format (each line after an EOS).

    `template` replaces it for other LMs, with {concepts} standing for the space-joined concepts.
    """
    text = template.format(concepts=" ".join(concepts)) if template else prompt_for(concepts)
    return [tokenizer.eos_token_id] + tokenizer.encode(text, add_special_tokens=False)


class MaskOnly:
    """LogitsProcessor: EOS is masked until the DFA accepts (no lookahead)."""

    def __init__(self, dfa, prompt_len: int, eos: int) -> None:
        self.dfa, self.prompt_len, self.eos = dfa, prompt_len, eos

    def __call__(self, input_ids, scores):  # noqa: ANN001, ANN204
        for row in range(input_ids.shape[0]):
            if not self.dfa.accepts(input_ids[row, self.prompt_len :].tolist()):
                scores[row, self.eos] = float("-inf")
        return scores


def run_hf(
    lm, tokenizer, constraint: dict, prompt: list[int], beams: int, max_new: int, mask_only: bool
) -> str:
    import torch
    from transformers import LogitsProcessorList

    from pc_core import compile_constraint

    ids = torch.tensor([prompt])
    processors = LogitsProcessorList()
    if mask_only:
        dfa = compile_constraint(constraint, tokenizer)
        processors.append(MaskOnly(dfa, ids.shape[1], tokenizer.eos_token_id))
    with torch.no_grad():
        out = lm.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                          max_new_tokens=max_new, early_stopping=True, logits_processor=processors,
                          pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True)


def run_pcgen(
    lm, tokenizer, hmm, constraint: dict, prompt: list[int], beams: int, max_new: int, weight: float
) -> str:
    from pc_core import generate

    out = generate(lm, tokenizer, hmm, constraint, prompt=prompt,
                   max_new_tokens=max_new, num_beams=beams, hmm_weight=weight)  # fmt: skip
    return out.sequences[0].text


# ---------------------------------------------------------------------------------------------- metrics

_TOKEN = re.compile(r"\w+|[^\w\s]")


def lemma_coverage(concepts: list[str], text: str) -> float:
    """Share of concept lemmas among the lemmas of the output words (lemminflect, nouns and verbs)."""
    import lemminflect

    lemmas = set()
    for word in re.findall(r"\w+", text.lower()):
        lemmas.add(word)
        for found in lemminflect.getAllLemmas(word).values():
            lemmas.update(found)
    return sum(c.lower() in lemmas for c in concepts) / len(concepts)


def forms_satisfied(forms: list[list[str]], text: str) -> bool:
    words = set(re.findall(r"\w+", text))
    return all(any(f in words for f in group) for group in forms)


def score(rows: list[dict], outputs: list[str]) -> dict:
    import sacrebleu
    from pycocoevalcap.cider.cider import Cider
    from rouge_score import rouge_scorer

    from pc_core import check_text

    n = len(outputs)
    satisfied = [check_text(r["constraint"], o) for r, o in zip(rows, outputs, strict=True)]
    forms = [forms_satisfied(r["forms"], o) for r, o in zip(rows, outputs, strict=True)]
    coverage = [lemma_coverage(r["concepts"], o) for r, o in zip(rows, outputs, strict=True)]
    width = max(len(r["refs"]) for r in rows)
    ref_streams = [[r["refs"][i] if i < len(r["refs"]) else None for r in rows] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(outputs, ref_streams, lowercase=True, tokenize="13a")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [
        max(scorer.score(ref, o)["rougeL"].fmeasure for ref in r["refs"])
        for r, o in zip(rows, outputs, strict=True)
    ]
    tok = lambda s: " ".join(_TOKEN.findall(s.lower()))
    cider, _ = Cider().compute_score({i: [tok(ref) for ref in r["refs"]] for i, r in enumerate(rows)},
                                     {i: [tok(o) or "empty"] for i, o in enumerate(outputs)})  # fmt: skip
    return {
        "satisfied %": 100 * sum(satisfied) / n,
        "forms satisfied %": 100 * sum(forms) / n,
        "lemma coverage %": 100 * statistics.mean(coverage),
        "BLEU-4": bleu.score,
        "ROUGE-L": 100 * statistics.mean(rouge),
        "CIDEr": float(cider),
    }


# ---------------------------------------------------------------------------------------------- driver


def read_cached(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_system(name: str, fn, rows: list[dict], work: Path) -> list[dict]:  # noqa: ANN001
    """Outputs {text, seconds} per row, cached in work/<name>.jsonl (an interrupted run resumes)."""
    path = work / f"{name}.jsonl"
    done = read_cached(path)
    with path.open("a") as fh:
        for i in range(len(done), len(rows)):
            t0 = time.perf_counter()
            text = fn(rows[i]).strip()
            done.append({"text": text, "seconds": time.perf_counter() - t0})
            fh.write(json.dumps(done[-1]) + "\n")
            fh.flush()
            if i % 50 == 0:
                print(f"{name}: {i + 1}/{len(rows)} {text!r}", flush=True)
    return done


EXTERNAL = {"constrained-beam": "benchmarks.commongen_cbs"}  # systems other scripts decode into work/


def all_outputs(systems: dict, rows: list[dict], work: Path) -> Iterator[tuple[str, list[str], float]]:
    """(name, texts, mean seconds per example): the systems decoded here, then EXTERNAL ones when complete."""
    work.mkdir(parents=True, exist_ok=True)
    decoded = ((name, run_system(name, fn, rows, work)) for name, fn in systems.items())
    external = ((name, read_cached(work / f"{name}.jsonl")[: len(rows)]) for name in EXTERNAL)
    for name, done in itertools.chain(decoded, external):
        if len(done) < len(rows):
            print(
                f"{name}: {len(done)}/{len(rows)} outputs in {work}; run `python -m {EXTERNAL[name]}` to include it"
            )
            continue
        yield name, [d["text"] for d in done], statistics.mean(d["seconds"] for d in done)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.commongen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lm", required=True)
    parser.add_argument("--hmm", nargs="+", default=[])
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "commongen")
    parser.add_argument("--work", type=Path, default=Path("runs/commongen/eval"))
    parser.add_argument("--limit", type=int, default=None, help="first N concept sets only")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hmm-weight", type=float, default=1.0)
    parser.add_argument(
        "--prompt-template",
        default=None,
        help='prompt text for another LM, {concepts} = the concepts joined by spaces (default "{concepts} =", '
        "the proxy LM's training format; an EOS always precedes it)",
    )
    parser.add_argument("--budgets", type=int, nargs="*", default=[], help="beam counts for the budget plot")
    parser.add_argument("--budget-limit", type=int, default=200, help="concept sets used for the budget plot")
    parser.add_argument("--report", type=Path, default=DOCS / "quality.md")
    parser.add_argument(
        "--systems", nargs="+", default=None, help="run only these systems (outputs are cached)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-report", dest="write", action="store_false", help="do not (re)write --report")
    args = parser.parse_args()
    if not (args.data / "commongen.dev.jsonl").exists():
        print(f"CommonGen data not found under {args.data}; nothing to do")
        return
    import torch

    from pc_core.hmm import HMM
    from pc_core.lm import load_lm

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, tokenizer = load_lm(args.lm, device="auto", dtype="auto")
    device = next(lm.parameters()).device
    loaded = [HMM.load(p, device=device) for p in args.hmm]
    hmms = {f"pcgen-H{hmm.hidden_size}": hmm for hmm in loaded}
    rows = load_dev(args.data, args.limit)

    def prompt(concepts: list[str]) -> list[int]:
        return prompt_ids(tokenizer, concepts, args.prompt_template)

    def systems(beams: int) -> dict:
        new = args.max_new_tokens
        out = {
            "unconstrained": lambda r: run_hf(
                lm, tokenizer, r["constraint"], prompt(r["concepts"]), beams, new, False
            ),
            "mask-only": lambda r: run_hf(
                lm, tokenizer, r["constraint"], prompt(r["concepts"]), beams, new, True
            ),
        }
        for name, hmm in hmms.items():
            out[name] = lambda r, hmm=hmm: run_pcgen(
                lm, tokenizer, hmm, r["constraint"], prompt(r["concepts"]), beams, new, args.hmm_weight
            )
        return {k: v for k, v in out.items() if args.systems is None or k in args.systems}

    results, headers = [], []
    for name, outputs, seconds in all_outputs(
        systems(args.beams), rows, args.work / f"beams{args.beams}-n{len(rows)}"
    ):
        metrics = score(rows, outputs)
        headers = ["system", *metrics, "ms / example"]
        results.append([name] + [round(v, 1) for v in metrics.values()] + [round(seconds * 1000)])
        print(results[-1], flush=True)

    budget_rows = []
    if args.budgets:
        sub = rows[: args.budget_limit]
        for beams in args.budgets:
            for name, outputs, seconds in all_outputs(
                systems(beams), sub, args.work / f"beams{beams}-n{len(sub)}"
            ):
                budget_rows.append(
                    {"beams": beams, "system": name, **score(sub, outputs), "ms": seconds * 1000}
                )
                print(budget_rows[-1], flush=True)
        plot_budgets(budget_rows, args.report.with_suffix(".png"))

    if args.write:
        write_report(args, rows, headers, results, budget_rows, lm, hmms)


def plot_budgets(budget_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["system"] for r in budget_rows):
        pts = [r for r in budget_rows if r["system"] == name]
        axes[0].plot([p["beams"] for p in pts], [p["satisfied %"] for p in pts], marker="o", label=name)
        axes[1].plot([p["beams"] for p in pts], [p["BLEU-4"] for p in pts], marker="o", label=name)
    axes[0].set(xlabel="beams", ylabel="constraint satisfaction (%)", title="Satisfaction vs budget")
    axes[1].set(xlabel="beams", ylabel="BLEU-4", title="BLEU-4 vs budget")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(args, rows, headers, results, budget_rows, lm, hmms) -> None:  # noqa: ANN001
    n_params = sum(p.numel() for p in lm.parameters())
    lines = [
        "# Quality on CommonGen (dev, proxy LM)",
        "",
        f"Generated by `{command()}` on {machine()}.",
        "",
        f"- Data: CommonGen v1.0 dev, {len(rows)} concept sets, 4,018 references; constraint = every concept with "
        'the inflections of its part of speech, natural case (`{"keywords": [{"keyword": "field", "pos": "noun"}, '
        "...]}`).",
        f"- LM: `{args.lm}`, a GPT-2 with {n_params / 1e6:.1f} M parameters trained here on the CommonGen training "
        "sentences (`benchmarks/proxy_lm.py`), prompt `c1 c2 c3 =`. GPT-2 Large cannot be downloaded on this "
        "machine; the harness runs unchanged with `--lm gpt2-large --hmm <its HMM>` on a GPU host.",
        "- HMMs: "
        + ", ".join(f"{k} ({args.hmm[i]})" for i, k in enumerate(hmms))
        + ", distilled from the proxy "
        "LM by `pcgen distill` (see the commands below).",
        f"- Decoding budget (all systems): {args.beams} beams, at most {args.max_new_tokens} new tokens; "
        f"hmm_weight {args.hmm_weight}.",
        "- Metrics: satisfied = the independent text checker (the constraint above); forms satisfied = "
        "NeuroLogic's accepted surface forms (`dev.constraint.json`); lemma coverage = share of concept lemmas "
        "among the output's lemmas (lemminflect, where the CommonGen authors use spaCy); BLEU-4 = sacrebleu "
        "corpus BLEU, 13a tokenisation, lowercased, all references; ROUGE-L = rouge-score F1, best reference, "
        "mean; CIDEr = pycocoevalcap CIDEr-D on lowercased word/punctuation tokens.",
        "",
        table(headers, results),
    ]
    if budget_rows:
        keys = ["satisfied %", "BLEU-4", "ROUGE-L", "ms"]
        lines += ["", f"## Against decoding budget (first {args.budget_limit} concept sets)", "",
                  f"![satisfaction and BLEU against beams]({args.report.with_suffix('.png').name})", "",
                  table(["beams", "system", *keys], [[r["beams"], r["system"], *[round(r[k], 1) for k in keys]]
                                                       for r in budget_rows])]  # fmt: skip
    args.report.parent.mkdir(exist_ok=True)
    existing = args.report.read_text() if args.report.exists() else ""
    marker = "<!-- notes -->"
    notes = existing[existing.index(marker) :] if marker in existing else marker + "\n"
    args.report.write_text("\n".join(lines) + "\n\n" + notes)


if __name__ == "__main__":
    main()
