"""Decoding parameters: the one object that carries them from an HTTP body, the CLI or Python to the decoder.

Constructing `DecodeParams` validates it (the only place the rules across fields live), so every instance is
valid and a request's parameters are checked exactly once. Errors name the field (`DecodingError.field`),
which the service maps to the request body's own name for it. The numeric limits below are the ones every
front end uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from pc_core.constraints.compiler import DEFAULT_MAX_STATES, DEFAULT_TIME_BUDGET_S
from pc_core.errors import PcgenError

MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows float32 on ordinary LM logits
MIN_TOP_P = 1e-6  # the API's floor: smaller values keep just the most likely token, as this does
SEED_MAX = 2**63 - 1
DEFAULT_MAX_NEW_TOKENS = 32


class DecodingError(PcgenError, ValueError):
    """Invalid decoding parameters; `field` names the parameter. Other parameters a message mentions are
    written as {name} (front ends substitute their own names for them)."""

    error_type = "invalid_parameters"

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: " + message.format_map(_Same()))


def _help(text: str) -> dict:
    return {"help": text}


@dataclass(frozen=True)
class DecodeParams:
    max_new_tokens: int = field(default=DEFAULT_MAX_NEW_TOKENS, metadata=_help("horizon: tokens to generate"))
    min_new_tokens: int = field(default=0, metadata=_help("no EOS before this many tokens"))
    num_beams: int = field(default=1, metadata=_help("beam search width"))
    num_return_sequences: int = field(default=1, metadata=_help("outputs: best beams, or samples"))
    do_sample: bool = field(default=False, metadata=_help("sample instead of beam search"))
    temperature: float = field(default=1.0, metadata=_help("sampling temperature"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass"))
    seed: int | None = field(default=None, metadata=_help("sampling seed"))
    hmm_weight: float = field(default=1.0, metadata=_help("exponent w on the guide's probability"))
    length_penalty: float = field(default=1.0, metadata=_help("final ranking: logprob / length ** this"))
    hmm_context_tokens: int = field(
        default=0, metadata=_help("prompt tokens fed to the HMM's forward vector")
    )
    max_states: int = field(default=DEFAULT_MAX_STATES, metadata=_help("cap on the constraint's DFA states"))
    time_budget_s: float = field(
        default=DEFAULT_TIME_BUDGET_S, metadata=_help("cap on compiling it, seconds")
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        need = _rule
        need(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        need(
            0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens", "must be in 0..max_new_tokens"
        )
        need(self.num_beams >= 1, "num_beams", "must be >= 1")
        need(self.num_return_sequences >= 1, "num_return_sequences", "must be >= 1")
        if self.do_sample:
            need(
                self.num_beams == 1,
                "num_beams",
                "must be 1 when sampling (num_return_sequences samples instead)",
            )
        else:
            need(
                self.num_return_sequences <= self.num_beams, "num_return_sequences", "must be <= {num_beams}"
            )
        need(MIN_TEMPERATURE <= self.temperature and math.isfinite(self.temperature), "temperature",
             f"must be >= {MIN_TEMPERATURE} (use beam search for deterministic output)")  # fmt: skip
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.seed is None or 0 <= self.seed <= SEED_MAX, "seed", f"must be in 0..{SEED_MAX}")
        need(self.hmm_weight >= 0 and math.isfinite(self.hmm_weight), "hmm_weight", "must be >= 0")
        need(math.isfinite(self.length_penalty), "length_penalty", "must be finite")
        need(self.hmm_context_tokens >= 0, "hmm_context_tokens", "must be >= 0")
        need(self.max_states >= 2, "max_states", "must be >= 2")
        need(self.time_budget_s > 0, "time_budget_s", "must be > 0")

    @property
    def rows(self) -> int:
        """Beams, or independent samples: the rows a request occupies in a batch."""
        return self.num_return_sequences if self.do_sample else self.num_beams

    @property
    def deterministic(self) -> bool:
        return not self.do_sample or self.seed is not None


DECODE_FIELDS = tuple(f.name for f in fields(DecodeParams))


class _Same(dict):
    """format_map argument that writes every {name} as the name itself."""

    def __missing__(self, key: str) -> str:
        return key


def _rule(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise DecodingError(name, message)


def _check_type(name: str, value: object, annotation: str) -> None:
    """Strict types: a bool is not an int, a string is not a number."""
    expected = {"int": int, "bool": bool, "float": (int, float), "int | None": (int, type(None))}[annotation]
    if isinstance(value, bool) and annotation != "bool" or not isinstance(value, expected):
        raise DecodingError(name, f"expected {annotation}, got {type(value).__name__}")
