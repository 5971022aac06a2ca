"""`pcgen generate`: constrained generation from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from pc_core.cli import _constraint_from_args, add_constraint_args


def cmd_generate(args: argparse.Namespace) -> int:
    from pc_core.decoding import generate
    from pc_core.hmm import HMM
    from pc_core.lm import load_lm

    model, tokenizer = load_lm(args.lm, device=args.device, dtype=args.dtype)
    hmm = HMM.load(args.hmm, device=next(model.parameters()).device)

    def stream(event) -> None:  # noqa: ANN001
        if event.index == 0:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    out = generate(
        model,
        tokenizer,
        hmm,
        _constraint_from_args(args),
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        num_beams=args.num_beams,
        num_return_sequences=args.num_return_sequences,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        hmm_weight=args.hmm_weight,
        length_penalty=args.length_penalty,
        on_stream=stream if args.stream and not args.json else None,
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(out), indent=2))
        return 0
    if args.stream:
        print()
    for seq in out.sequences:
        mark = "ok" if seq.constraint_satisfied else "NOT SATISFIED"
        print(f"[{mark}, {seq.finish_reason}, logprob {seq.logprob:.2f}] {args.prompt}{seq.text}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text that satisfies a constraint")
    p.add_argument("--lm", default="gpt2-large", help="causal LM path or hub id (default: gpt2-large)")
    p.add_argument("--hmm", required=True, help="HMM directory, GeLaTo file or hub id")
    add_constraint_args(p)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--min-new-tokens", type=int, default=0)
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--hmm-weight", type=float, default=1.0)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--stream", action="store_true", help="print the first output as it is settled")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=cmd_generate)
