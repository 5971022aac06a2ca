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
from pc_core.constraints.spec import MAX_AFFIX_CHARS, MAX_STOP_STRINGS, MAX_SUFFIX_CHARS, affix_problem
from pc_core.errors import ErrorKind, PcgenError

MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows float32 on ordinary LM logits
MIN_TOP_P = 1e-6  # the API's floor: smaller values keep just the most likely token, as this does
SEED_MAX = 2**63 - 1
DEFAULT_MAX_NEW_TOKENS = 32
MAX_LOGIT_BIAS = 100.0  # OpenAI's range; -100 is a ban
MAX_LOGIT_BIAS_TOKENS = 1024
MAX_PENALTY = 2.0  # OpenAI's range for presence_penalty and frequency_penalty
MAX_LOGPROBS = 20  # alternatives per token (vLLM's default cap; OpenAI allows 5 on completions, 20 on chat)


class DecodingError(PcgenError, ValueError):
    """Invalid decoding parameters; `field` names the parameter. Other parameters a message mentions are
    written as {name} (front ends substitute their own names for them)."""

    kind = ErrorKind.INVALID_PARAMETERS

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
    guide: str = field(
        default="auto",
        metadata=_help("auto: the exact guide when it fits the budget, else the factored one; exact: refuse past "
                       "the budget; factored: always factored (docs/method.md §5.9)"),
    )  # fmt: skip
    guide_budget_bytes: int | None = field(
        default=None, metadata=_help("exact guide's table bytes at most (default: follows the device)")
    )
    guide_budget_gflops: float | None = field(
        default=None, metadata=_help("exact guide's precompute GFLOP at most (default: follows the device)")
    )
    guide_table_dtype: str = field(
        default="auto", metadata=_help("guide rows stored in: auto (bfloat16 on GPU), float32, bfloat16")
    )
    guide_emission_dtype: str = field(
        default="auto",
        metadata=_help("emission the guide step multiplies with: auto (bfloat16 on GPU and on CPUs with a "
                       "bfloat16 product), float32, bfloat16 (docs/method.md §5.9)"),
    )  # fmt: skip
    time_budget_s: float = field(
        default=DEFAULT_TIME_BUDGET_S, metadata=_help("cap on compiling it, seconds")
    )
    suffix: str | None = field(
        default=None,
        metadata=_help(
            f"infilling: text that must follow the generated span (at most {MAX_SUFFIX_CHARS} characters; "
            "the LM writes its first word, any tokenisation, and the rest is attached; the HMM conditions on "
            "all of it); the constraint is judged on the span"
        ),
    )
    stop: tuple[str, ...] = field(
        default=(),
        metadata=_help(
            f"stop strings (at most {MAX_STOP_STRINGS}, {MAX_AFFIX_CHARS} characters each): the text ends "
            "before the first one, and the constraint is judged on that text"
        ),
    )
    logit_bias: tuple[tuple[int, float], ...] = field(
        default=(),
        metadata=_help(
            f"(token id, bias) pairs added to the LM's logits before the guide, bias in "
            f"[{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]; {-MAX_LOGIT_BIAS:g} bans the token exactly (the guide "
            "knows, so no search is steered towards it; not EOS, whose bias stays a bias)"
        ),
    )
    presence_penalty: float = field(
        default=0.0, metadata=_help("subtracted from the LM's logit of every token generated already")
    )
    frequency_penalty: float = field(
        default=0.0, metadata=_help("times its count so far, subtracted from each generated token's LM logit")
    )
    logprobs: int | None = field(
        default=None,
        metadata=_help(
            f"record each generated token's log-probability under the guided distribution and its top "
            f"alternatives (this many, at most {MAX_LOGPROBS})"
        ),
    )

    def __post_init__(self) -> None:
        self._normalise_containers()
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        self._check_search()
        self._check_numbers()
        self._check_guide()
        self._check_suffix_and_stop()
        self._check_logit_bias()
        self._check_penalties_and_logprobs()
        object.__setattr__(self, "stop", tuple(sorted(set(self.stop))))  # canonical: the order means nothing

    def _normalise_containers(self) -> None:
        """JSON and Python spellings of stop and logit_bias, as tuples (before the strict type check)."""
        if isinstance(self.stop, (str, list)):  # one string, or a list (JSON), is normalised to a tuple
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if isinstance(self.logit_bias, (dict, list)):  # {id: bias} or [(id, bias), ...] -> sorted pairs
            pairs = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
            object.__setattr__(
                self, "logit_bias", tuple(tuple(p) if isinstance(p, list) else p for p in pairs)
            )

    def _check_search(self) -> None:
        """Length, beams and return sequences: how many rows, and how long."""
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

    def _check_numbers(self) -> None:
        """Sampling and scoring numbers, and the constraint compiler's caps."""
        need = _rule
        need(MIN_TEMPERATURE <= self.temperature and math.isfinite(self.temperature), "temperature",
             f"must be >= {MIN_TEMPERATURE} (use beam search for deterministic output)")  # fmt: skip
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.seed is None or 0 <= self.seed <= SEED_MAX, "seed", f"must be in 0..{SEED_MAX}")
        need(self.hmm_weight >= 0 and math.isfinite(self.hmm_weight), "hmm_weight", "must be >= 0")
        need(math.isfinite(self.length_penalty), "length_penalty", "must be finite")
        need(self.hmm_context_tokens >= 0, "hmm_context_tokens", "must be >= 0")
        need(self.max_states >= 2, "max_states", "must be >= 2")
        need(self.time_budget_s > 0, "time_budget_s", "must be > 0")

    def _check_guide(self) -> None:
        """Which guide, its budget and its tables' storage."""
        need = _rule
        need(self.guide in ("auto", "exact", "factored"), "guide", "must be auto, exact or factored")
        need(
            self.guide_budget_bytes is None or self.guide_budget_bytes >= 0,
            "guide_budget_bytes",
            "must be >= 0",
        )
        need(self.guide_budget_gflops is None or self.guide_budget_gflops >= 0, "guide_budget_gflops",
             "must be >= 0")  # fmt: skip
        need(self.guide_table_dtype in ("auto", "float32", "bfloat16"), "guide_table_dtype",
             "must be auto, float32 or bfloat16")  # fmt: skip
        need(self.guide_emission_dtype in ("auto", "float32", "bfloat16"), "guide_emission_dtype",
             "must be auto, float32 or bfloat16")  # fmt: skip

    def _check_suffix_and_stop(self) -> None:
        """The texts around the span: the infilling suffix and the stop strings, which must not occur in it."""
        need = _rule
        if self.suffix is not None:
            problem = affix_problem(self.suffix, MAX_SUFFIX_CHARS)
            hint = " (leave it out, or null, for no suffix)" if self.suffix == "" else ""
            need(problem is None, "suffix", f"{problem}{hint}")
        need(len(self.stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} stop strings")
        for i, text in enumerate(self.stop):
            problem = affix_problem(text)
            need(problem is None, "stop", f"stop string {i} {text!r}: {problem}")
            need(self.suffix is None or text not in self.suffix, "stop",
                 f"stop string {text!r} occurs in the suffix, so the suffix could never be written")  # fmt: skip

    def _check_penalties_and_logprobs(self) -> None:
        need = _rule
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            need(math.isfinite(value) and abs(value) <= MAX_PENALTY, name,
                 f"must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}]")  # fmt: skip
        need(self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS, "logprobs",
             f"must be in 0..{MAX_LOGPROBS}")  # fmt: skip

    def _check_logit_bias(self) -> None:
        need = _rule
        need(len(self.logit_bias) <= MAX_LOGIT_BIAS_TOKENS, "logit_bias",
             f"at most {MAX_LOGIT_BIAS_TOKENS} tokens")  # fmt: skip
        for token, bias in self.logit_bias:
            need(0 <= token, "logit_bias", f"token ids are >= 0, got {token}")
            need(math.isfinite(bias) and abs(bias) <= MAX_LOGIT_BIAS, "logit_bias",
                 f"token {token}: the bias must be in [{-MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]")  # fmt: skip
        tokens = [token for token, _ in self.logit_bias]
        need(len(set(tokens)) == len(tokens), "logit_bias", "a token appears twice")
        object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias)))  # canonical order

    @property
    def banned_tokens(self) -> tuple[int, ...]:
        """The tokens logit_bias bans (bias -100): enforced exactly, by the constraint's automaton."""
        return tuple(token for token, bias in self.logit_bias if bias <= -MAX_LOGIT_BIAS)

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
    if annotation == "tuple[str, ...]":
        if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
            raise DecodingError(name, f"expected a string or a list of strings, got {_value_type(value)}")
        return
    if annotation == "tuple[tuple[int, float], ...]":
        if not isinstance(value, tuple) or not all(_is_bias_pair(p) for p in value):
            raise DecodingError(name, "expected a mapping of token ids to biases, or (token id, bias) pairs")
        return
    expected = {
        "int": int,
        "bool": bool,
        "float": (int, float),
        "int | None": (int, type(None)),
        "str | None": (str, type(None)),
        "str": str,
        "float | None": (int, float, type(None)),
    }[annotation]
    if isinstance(value, bool) and annotation != "bool" or not isinstance(value, expected):
        raise DecodingError(name, f"expected {annotation}, got {type(value).__name__}")


def _is_bias_pair(p: object) -> bool:
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    return isinstance(p, tuple) and len(p) == 2 and number(p[0]) and isinstance(p[0], int) and number(p[1])


def _value_type(value: object) -> str:
    if isinstance(value, tuple):
        return "a list holding " + ", ".join(sorted({type(v).__name__ for v in value}))
    return type(value).__name__
