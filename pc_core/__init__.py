"""pcgen core: constraints -> token DFAs, the HMM, the exact constraint guide and guided decoding."""

from pc_core.constraints import (
    TokenDFA,
    check_ids,
    check_text,
    compile_constraint,
    parse_constraint,
)
from pc_core.errors import (
    ConstraintError,
    ConstraintTooComplex,
    HMMFormatError,
    PcgenError,
    TokenizerMismatch,
    UnsatisfiableConstraint,
)

__all__ = [
    "ConstraintError",
    "ConstraintTooComplex",
    "HMMFormatError",
    "PcgenError",
    "TokenDFA",
    "TokenizerMismatch",
    "UnsatisfiableConstraint",
    "check_ids",
    "check_text",
    "compile_constraint",
    "parse_constraint",
]
