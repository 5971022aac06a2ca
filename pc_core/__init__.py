"""pcgen core: constraints -> token DFAs, the HMM, the exact constraint guide and guided decoding."""

from pc_core.constraints import (
    TokenDFA,
    check_ids,
    check_text,
    compile_constraint,
    parse_constraint,
)
from pc_core.decoding import BatchDecoder, DecodeParams, GenerationOutput, Request, generate
from pc_core.errors import (
    ConstraintError,
    ConstraintTooComplex,
    HMMFormatError,
    PcgenError,
    TokenizerMismatch,
    UnsatisfiableConstraint,
)
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM

__all__ = [
    "BatchDecoder",
    "ConstraintGuide",
    "DecodeParams",
    "GenerationOutput",
    "HMM",
    "Request",
    "generate",
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
