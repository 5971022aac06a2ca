"""`pcgen` command line. `pcgen --help` and `pcgen --version` import no subcommand (the list of commands is
the table below); `pcgen COMMAND ...` imports that command's module only, and commands import their heavy
dependencies (torch, transformers) when they run."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

from pcgen.constraint_args import add_constraint_args, constraint_from_args

DESCRIPTION = "Constrained text generation: a language model guided by an HMM, so every output satisfies its constraint."
# name -> ((module, its function that adds the command) or None: this module, one-line help for `pcgen --help`)
COMMANDS = {
    "compile": (None, "compile a constraint to a token DFA and print its summary"),
    "import-hmm": (None, "convert a Ctrl-G / GeLaTo / pcgen HMM (path or hub id) to pcgen's checkpoint layout"),
    "generate": (("pcgen.cli_generate", "register"), "generate text that satisfies a constraint"),
    "demo": (("pcgen.demo", "register"), "offline end-to-end demo: tiny LM -> distilled HMM -> server -> request"),
    "distill": (("distill.cli", "register"), "distil an HMM from a causal LM: sample, lvd, train, or run the whole pipeline"),
    "serve": (("service.cli", "register"), "run the REST service (POST /generate, /v1/completions, SSE, /metrics)"),
}  # fmt: skip


def cmd_compile(args: argparse.Namespace) -> int:
    from pc_core.hub import TOKENIZER_FILES, check_source

    local_only = check_source(args.tokenizer, "tokenizer", TOKENIZER_FILES)  # before the heavy imports
    from pc_core.constraints import compile_constraint
    from pc_core.constraints.nodes import expanded_forms
    from pc_core.constraints.spec import parse_constraint
    from pc_core.lm import load_tokenizer

    constraint = parse_constraint(constraint_from_args(args))
    tokenizer = load_tokenizer(args.tokenizer, _local_only=local_only)
    dfa = compile_constraint(constraint, tokenizer, max_states=args.max_states)
    summary = {**dfa.summary(), "keywords": expanded_forms(constraint)}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    for key, value in summary.items():
        if key != "keywords":
            print(f"{key:>22}: {value}")
    for item in summary["keywords"]:
        print(f"{item['polarity']:>10} {item['keyword']!r} (case {item['case']}): {', '.join(item['forms'])}")
    return 0


def _register_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help=COMMANDS["compile"][1])
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer path or hub id (default: gpt2)")
    add_constraint_args(p)
    p.add_argument("--max-states", type=int, default=2048)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_compile)


def cmd_import_hmm(args: argparse.Namespace) -> int:
    from pc_core.hmm import HMM

    hmm = HMM.load(args.src)
    if args.eos_token_id is not None:
        hmm.eos_token_id = args.eos_token_id
    if args.lm is not None:  # record the pairing the checkpoint does not carry
        from pc_core.constraints.vocab import tokenizer_fingerprint
        from pc_core.errors import TokenizerMismatch
        from pc_core.lm import load_tokenizer

        tokenizer = load_tokenizer(args.lm)
        if len(tokenizer) != hmm.vocab_size:
            raise TokenizerMismatch(f"the HMM has {hmm.vocab_size} tokens but the tokenizer of {args.lm} has "
                                    f"{len(tokenizer)}")  # fmt: skip
        hmm.metadata.update(lm=args.lm, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer))
    hmm.save(args.dst)
    print(
        f"wrote {args.dst}: hidden_size={hmm.hidden_size} vocab_size={hmm.vocab_size} eos={hmm.eos_token_id}"
    )
    return 0


def _register_import_hmm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-hmm", help=COMMANDS["import-hmm"][1])
    p.add_argument("src", help="Ctrl-G directory, GeLaTo torch file, pcgen directory, or hub id")
    p.add_argument("dst", help="output directory (config.json + model.safetensors)")
    p.add_argument("--eos-token-id", type=int, default=None, help="set when the source does not record it")
    p.add_argument(
        "--lm",
        default=None,
        help="the LM (path or hub id) the HMM was distilled from: records it and its tokenizer's fingerprint, "
        "so that loading the HMM next to another tokenizer is an error",
    )
    p.set_defaults(func=cmd_import_hmm)


def _registrar(name: str) -> Callable[[argparse._SubParsersAction], None] | None:
    """The function that adds command `name`; None when its package is not installed."""
    own = {"compile": _register_compile, "import-hmm": _register_import_hmm}
    if name in own:
        return own[name]
    module, function = COMMANDS[name][0]
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        if err.name != module and not module.startswith(f"{err.name}."):
            raise
        return None


def build_parser(only: str | None = None, *, listing: bool = False) -> argparse.ArgumentParser:
    """The parser with every command (`only`: that command in full, the others as entries of the list;
    `listing`: every command as an entry, importing none)."""
    from pcgen import __version__

    parser = argparse.ArgumentParser(prog="pcgen", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"pcgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        register = None if listing or (only is not None and name != only) else _registrar(name)
        if register is not None:
            register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command, listing=command is None)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.error(f"{args.command}: not installed (its package is missing from this installation)")
    from pc_core.errors import PcgenError

    try:
        return int(args.func(args) or 0)
    except PcgenError as err:
        print(f"pcgen {args.command}: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`pcgen compile --json | head`): stop quietly, like `cat`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe ended


if __name__ == "__main__":
    sys.exit(main())
