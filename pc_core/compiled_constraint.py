"""A request's constraint as decoding needs it, derived once and compiled once (docs/method.md §3):

    the request's constraint --split_affixes--> body         the span's constraint
    body + the logit_bias bans (exact bans) ---> constraint    what each output's span is checked against
    constraint + suffix's junction + stops  ---> judged        what the automaton accepts, outputs judged by
    compile(judged)                         ---> dfa

Whoever compiles builds the object (`compile_request` in-process, a server in its compile pool: `for_request`,
then `with_dfa`) and hands it to `decoding.prepare`, which never compiles the request's automaton itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pc_core.constraints import Constraint, compile_constraint
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import All, AnyOf, Not, Tokens
from pc_core.constraints.spec import split_affixes, with_affixes
from pc_core.infill import split_suffix
from pc_core.params import DecodeParams, DecodingError


@dataclass(frozen=True)
class CompiledConstraint:
    body: Constraint  # the span's constraint, affixes split off, without the bans (diagnostics start here)
    constraint: Constraint  # body and "no banned token" (GuidedSearch.constraint)
    judged: Constraint  # constraint with the suffix's junction and the stop strings, spec.Affixed (GuidedSearch.judged)
    dfa: TokenDFA | None = None  # the automaton of `judged`; None until compiled (`with_dfa`)
    compiled_elsewhere: bool = False  # by the caller (`with_dfa`), not here: see decoding.prepare

    @classmethod
    def for_request(
        cls, constraint: Constraint | dict | str, params: DecodeParams, vocab_size: int
    ) -> CompiledConstraint:
        """The derived constraints, not compiled yet: what a server's compile pool compiles is `judged`.
        Raises DecodingError for a logit_bias token id outside the vocabulary."""
        check_logit_bias(params, vocab_size)
        body = split_affixes(constraint)[0]
        banned = with_bans(body, params.banned_tokens)
        junction = split_suffix(params.suffix)[0] if params.suffix is not None else None  # pc_core.infill
        return cls(body, banned, with_affixes(banned, junction, params.stop))

    def with_dfa(self, dfa: TokenDFA) -> CompiledConstraint:
        """With the automaton its caller compiled (with or without the blocklist mask) for `judged`."""
        return dataclasses.replace(self, dfa=dfa, compiled_elsewhere=True)


def compile_request(
    constraint: Constraint | dict | str | CompiledConstraint, params: DecodeParams, tokenizer: Any
) -> CompiledConstraint:
    """The request's constraint compiled in this thread (the library's default; a server compiles in worker
    processes instead). A CompiledConstraint that has its automaton is returned as it is."""
    if not isinstance(constraint, CompiledConstraint):
        constraint = CompiledConstraint.for_request(constraint, params, len(tokenizer))
    if constraint.dfa is not None:
        return constraint
    dfa = compile_constraint(constraint.judged, tokenizer, max_states=params.max_states,
                             time_budget_s=params.time_budget_s, lazy=params.guide != "exact")  # fmt: skip
    return dataclasses.replace(constraint, dfa=dfa)  # lazy: a LazyDFA past the explicit budget (lazy_guide)


def with_bans(constraint: Constraint, banned: Sequence[int]) -> Constraint:
    """The constraint and "none of these token ids is generated"."""
    if not banned:
        return constraint
    never = Not(AnyOf(tuple(Tokens((token,)) for token in banned)))
    return All((constraint, never))


def check_logit_bias(params: DecodeParams, vocab_size: int) -> None:
    """The token ids logit_bias names are in the vocabulary (DecodingError otherwise)."""
    for token, _ in params.logit_bias:
        if token >= vocab_size:
            raise DecodingError("logit_bias", f"token {token} is not in the vocabulary (0..{vocab_size - 1})")
