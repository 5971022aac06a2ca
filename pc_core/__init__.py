"""pcgen core: constraints -> token DFAs, the HMM, the exact constraint guide and guided decoding.

Names are imported on first use (PEP 562), so `import pc_core.constraints` (a constraint-compiling worker
process) does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenDFA": "pc_core.constraints",
    "check_ids": "pc_core.constraints",
    "check_text": "pc_core.constraints",
    "compile_constraint": "pc_core.constraints",
    "parse_constraint": "pc_core.constraints",
    "CompiledConstraint": "pc_core.compiled_constraint",
    "BatchDecoder": "pc_core.decoding",
    "GenerationOutput": "pc_core.results",
    "GuidedSearch": "pc_core.search",
    "generate": "pc_core.decoding",
    "prepare": "pc_core.preparation",
    "ConstraintError": "pc_core.errors",
    "ConstraintTooComplex": "pc_core.errors",
    "ErrorKind": "pc_core.errors",
    "HMMFormatError": "pc_core.errors",
    "ModelLoadError": "pc_core.errors",
    "PcgenError": "pc_core.errors",
    "TokenizerMismatch": "pc_core.errors",
    "UnsatisfiableConstraint": "pc_core.errors",
    "ConstraintGuide": "pc_core.guide",
    "ConstraintLogitsProcessor": "pc_core.hf",
    "HMM": "pc_core.hmm",
    "DecodeParams": "pc_core.params",
    "DecodingError": "pc_core.params",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pc_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
