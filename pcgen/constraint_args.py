"""The constraint flags every command that takes a constraint shares (`--keywords` or `--constraint`): one
module that pcgen/cli.py and the command modules both import, so neither imports the other."""

from __future__ import annotations

import argparse
import json


def add_constraint_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--keywords", nargs="+", metavar="WORD", help="words that must all appear (with inflections)"
    )
    group.add_argument("--constraint", metavar="JSON", help="a constraint in the JSON constraint language")


def constraint_from_args(args: argparse.Namespace) -> dict:
    """The constraint spec the flags give (not parsed yet); exits naming the flag when there is none."""
    if args.constraint:
        try:
            return json.loads(args.constraint)
        except json.JSONDecodeError as err:
            raise SystemExit(f"--constraint is not valid JSON: {err}") from err
    if args.keywords:
        return {"keywords": args.keywords}
    raise SystemExit("give --keywords WORD... or --constraint JSON")
