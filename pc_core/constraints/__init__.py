"""The constraint language and its compilation to token-level DFAs."""

from pc_core.constraints.checker import check_ids, check_text, decode_continuation, judge_ids, judge_text
from pc_core.constraints.compiler import DEFAULT_MAX_STATES, compile_constraint
from pc_core.constraints.dfa import TokenDFA
from pc_core.constraints.nodes import Constraint, canonical_json
from pc_core.constraints.spec import parse_constraint, with_affixes

__all__ = [
    "DEFAULT_MAX_STATES",
    "Constraint",
    "TokenDFA",
    "canonical_json",
    "check_ids",
    "check_text",
    "compile_constraint",
    "decode_continuation",
    "judge_ids",
    "judge_text",
    "parse_constraint",
    "with_affixes",
]
