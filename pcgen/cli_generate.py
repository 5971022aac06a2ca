"""`pcgen generate`: constrained generation from the command line. The decoding flags are DecodeParams' fields
(one flag per field, with its help text), so the CLI, Python and the REST API share one parameter object."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

from pcgen.constraint_args import add_constraint_args, constraint_from_args

CLI_DEFAULTS = {"num_beams": None}  # 4 beams (better than greedy at a terminal), 1 when sampling
SERVER_ONLY = ("max_states", "time_budget_s")  # compile limits: library defaults on the command line


def cmd_generate(args: argparse.Namespace) -> int:
    from pc_core.hub import check_source

    check_source(args.lm, "model")  # a wrong source fails in a moment, before the heavy imports
    from pc_core.constraints import parse_constraint
    from pc_core.decoding import generate
    from pc_core.hmm import HMM
    from pc_core.lm import check_pairing, load_lm
    from pc_core.params import DecodeParams

    if args.num_beams is None:
        args.num_beams = 1 if args.do_sample else 4
    params = DecodeParams(**{f.name: getattr(args, f.name) for f in _decode_fields()})
    model, tokenizer = load_lm(args.lm, device=args.device, dtype=args.dtype)
    hmm = HMM.load(args.hmm, device=next(model.parameters()).device)
    check_pairing(hmm, tokenizer, args.lm, allow_mismatch=args.allow_tokenizer_mismatch)

    def stream(event) -> None:  # noqa: ANN001
        if event.index == 0:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    constraint = parse_constraint(constraint_from_args(args))
    started = time.perf_counter()
    on_stream = stream if args.stream and not args.json else None
    out = generate(model, tokenizer, hmm, constraint, params, prompt=args.prompt, on_stream=on_stream)
    if args.json:
        print(json.dumps(json_body(out, constraint, (time.perf_counter() - started) * 1000), indent=2))
        return 0
    if args.stream:
        print(params.suffix or "")  # the stream carries the span; the suffix follows it
    for seq in out.sequences:
        mark = "ok" if seq.constraint_satisfied else "NOT SATISFIED"
        print(f"[{mark}, {seq.finish_reason}, logprob {seq.logprob:.2f}] {args.prompt}{seq.full_text}")
    return 0


def json_body(out: Any, constraint: Any, total_ms: float) -> dict[str, Any]:
    """The REST response's body without id, model and cached, from the service's own serializer (timings:
    queue_ms is 0, there is no queue here; total_ms is the whole generate call)."""
    from service.response_body import generation_body, outputs_json, with_total

    return generation_body(outputs_json(out, constraint), out.usage, with_total(out.timings, total_ms),
                           out.dfa_states, out.guide, constraint)  # fmt: skip


def _decode_fields() -> list[dataclasses.Field]:
    from pc_core.params import DecodeParams

    return [f for f in dataclasses.fields(DecodeParams) if f.name not in SERVER_ONLY]


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    for f in _decode_fields():
        flag = "--" + f.name.replace("_", "-")
        default = CLI_DEFAULTS.get(f.name, f.default)
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=f.metadata["help"])
        elif f.type == "tuple[str, ...]":  # repeatable: --stop A --stop B
            p.add_argument(
                flag, action="append", default=[], metavar="TEXT", help=f"{f.metadata['help']} (repeatable)"
            )
        elif f.type == "tuple[tuple[int, float], ...]":  # repeatable: --logit-bias 50256=-100
            p.add_argument(flag, action="append", default=[], type=_token_bias, metavar="ID=BIAS",
                           help=f"{f.metadata['help']} (repeatable)")  # fmt: skip
        else:
            kind = {"int": int, "float": float, "int | None": int, "str | None": str, "str": str,
                    "float | None": float}[f.type]  # fmt: skip
            shown = "4, or 1 with --do-sample" if f.name == "num_beams" else default
            p.add_argument(flag, type=kind, default=default, help=f"{f.metadata['help']} (default {shown})")


def _token_bias(text: str) -> tuple[int, float]:
    token, sep, bias = text.partition("=")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text that satisfies a constraint")
    p.add_argument("--lm", default="gpt2-large", help="causal LM path or hub id (default: gpt2-large)")
    p.add_argument("--hmm", required=True, help="HMM directory, GeLaTo file or hub id")
    add_constraint_args(p)
    p.add_argument("--prompt", default="")
    _add_decode_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--stream", action="store_true", help="print the first output as it is settled")
    p.add_argument(
        "--allow-tokenizer-mismatch",
        action="store_true",
        help="use an HMM whose recorded tokenizer fingerprint differs from the LM's tokenizer (a warning)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON, shaped like the REST response (outputs, usage, timings, dfa_states, "
        "guide, keywords)",
    )
    p.set_defaults(func=cmd_generate)
