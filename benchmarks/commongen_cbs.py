"""CommonGen baseline: the constrained beam search published in transformers (`force_words_ids`).

transformers 5 removed it, so this script runs in its own environment with transformers 4.x, next to the
main one, and writes its outputs where benchmarks/commongen.py reads them (system "constrained-beam"):

    python3 -m venv runs/venv-tf4
    runs/venv-tf4/bin/pip install torch==2.13.0 transformers==4.46.3
    runs/venv-tf4/bin/python -m benchmarks.commongen_cbs --lm runs/commongen2/lm --work runs/commongen2/eval

Each concept becomes a DisjunctiveConstraint over NeuroLogic's accepted surface forms of that concept
(`dev.constraint.json`, each with a leading space), the setting the benchmark's constrained decoders used.
The search forces a constraint token sequence into some beams and ranks beams by how many constraints they
have fulfilled; it has no lookahead, and a beam still missing a concept at max_new_tokens is returned as is,
so satisfaction is not guaranteed. Only stdlib, torch and transformers are imported (no pc_core), so the
script runs under the older transformers. Outputs are cached per example (resumable).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.commongen_cbs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lm", required=True)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "commongen")
    parser.add_argument("--work", type=Path, default=Path("runs/commongen/eval"))
    parser.add_argument("--limit", type=int, default=None, help="first N concept sets only")
    parser.add_argument("--beams", type=int, nargs="+", default=[4])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt-template", default="{concepts} =", help="as in benchmarks/commongen.py")
    args = parser.parse_args()
    if not (args.data / "commongen.dev.jsonl").exists():
        print(f"CommonGen data not found under {args.data}; nothing to do")
        return

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if int(transformers.__version__.split(".")[0]) >= 5:
        raise SystemExit(
            f"transformers {transformers.__version__} has no constrained beam search; see the docstring"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    # the tokenizer was saved by transformers 5, whose tokenizer_config names a class 4.x lacks
    special = json.loads((Path(args.lm) / "tokenizer_config.json").read_text())
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.lm) / "tokenizer.json"),
                                        eos_token=special["eos_token"])  # fmt: skip
    eos = tokenizer.eos_token_id

    lines = (args.data / "commongen.dev.jsonl").read_text().splitlines()
    forms = (args.data / "dev.constraint.json").read_text().splitlines()
    rows = [(json.loads(line), json.loads(form)) for line, form in zip(lines, forms, strict=True)]
    rows = rows[: args.limit] if args.limit else rows

    for beams in args.beams:
        work = args.work / f"beams{beams}-n{len(rows)}"
        work.mkdir(parents=True, exist_ok=True)
        path = work / "constrained-beam.jsonl"
        done = len(path.read_text().splitlines()) if path.exists() else 0
        with path.open("a") as fh:
            for i in range(done, len(rows)):
                item, groups = rows[i]
                concepts = [c.split("_")[0] for c in item["concept_set"].split("#")]
                prompt = [eos] + tokenizer.encode(
                    args.prompt_template.format(concepts=" ".join(concepts)), add_special_tokens=False
                )
                force = []
                for group in groups:  # one disjunction per concept
                    variants = {tuple(tokenizer.encode(" " + f, add_special_tokens=False)) for f in group}
                    # DisjunctiveTrie rejects a variant that is a token prefix of another: keep the shorter
                    kept = [
                        v for v in variants if not any(len(u) < len(v) and v[: len(u)] == u for u in variants)
                    ]
                    force.append([list(v) for v in sorted(kept)])
                ids = torch.tensor([prompt])
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = lm.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                                      max_new_tokens=args.max_new_tokens, force_words_ids=force,
                                      pad_token_id=eos, eos_token_id=eos)  # fmt: skip
                new = out[0, ids.shape[1] :].tolist()
                new = new[: new.index(eos)] if eos in new else new
                text = tokenizer.decode(new, skip_special_tokens=True).strip()
                fh.write(json.dumps({"text": text, "seconds": time.perf_counter() - t0}) + "\n")
                fh.flush()
                if i % 50 == 0:
                    print(f"constrained-beam (beams {beams}): {i + 1}/{len(rows)} {text!r}", flush=True)


if __name__ == "__main__":
    main()
