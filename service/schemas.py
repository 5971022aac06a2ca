"""Request and response bodies (pydantic), and the checks that depend on the server's settings.

Schema errors are FastAPI 422s whose `detail` entries carry the field path in `loc`; constraint parse errors
are reported the same way, with the constraint's own path appended, e.g.
`["body", "constraint", "all", 2, "word_at"]`. The OpenAI endpoint family's bodies are in
`openai_schemas.py`; they share the checks below.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from pc_core.constraints import Constraint, parse_constraint
from pc_core.constraints.spec import keywords_by_polarity
from pc_core.errors import ConstraintError
from pc_core.params import (
    DECODE_FIELDS,
    DEFAULT_MAX_NEW_TOKENS,
    MIN_TEMPERATURE,
    MIN_TOP_P,
    SEED_MAX,
    DecodeParams,
    DecodingError,
)
from service.errors import constraint_path_to_loc, field_error
from service.generation import GenerationSpec
from service.response_body import KEYWORD_FORMS_SHOWN
from service.settings import Settings

ConstraintSpec = dict[str, Any] | str
UNICODE_PROBLEM = "contains invalid Unicode (a lone surrogate)"

# The bounds of the fields the native and the OpenAI bodies share, written once (the rules that hold across
# fields are DecodeParams'; the server's own caps are Settings', applied by `check_limits`).
Keywords = Annotated[list[str] | None, Field(min_length=1, description="shorthand for {'keywords': [...]}")]
ConstraintField = Annotated[
    ConstraintSpec | None, Field(description="a constraint in the constraint language")
]
HmmWeight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, description="exponent w on the guide")]
LengthPenalty = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False, description="beam ranking")]
Seed = Annotated[int | None, Field(ge=0, le=SEED_MAX, description="sampling seed (makes sampling cacheable)")]


def valid_unicode(value: str) -> bool:
    """False for a string with a lone surrogate (JSON can carry one; UTF-8, the tokenizer and Redis cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unicode(value: str) -> str:
    """A field validator: the string, or a ValueError naming the problem."""
    if not valid_unicode(value):
        raise ValueError(UNICODE_PROBLEM)
    return value


# ---------------------------------------------------------------------------------------------- /generate


class GenerateRequest(BaseModel):
    """Native request. Give the constraint either as `keywords` (all must appear, with inflections) or as
    `constraint` (the full constraint language: keywords, keyword, all, any, not, ordered, forbidden, word_at,
    word_count, count, at_least, at_most, tokens, ends_with, and the character-level regex / pattern, choice,
    json_schema / json: pc_core/constraints/spec.py)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "The", "keywords": ["dog", "frisbee"], "max_new_tokens": 12, "num_beams": 4},
                {
                    "prompt": "A",
                    "constraint": {"all": ["snow", {"word_at": 1, "word": "cold"}]},
                    "do_sample": True,
                    "seed": 7,
                    "stream": True,
                },  # fmt: skip
            ]
        },
    )

    prompt: str = Field("", description="text to continue (the constraint applies to the continuation only)")
    keywords: Keywords = None
    constraint: ConstraintField = None
    max_new_tokens: int | None = Field(
        None, ge=1, description=f"horizon (default {DEFAULT_MAX_NEW_TOKENS}, capped by the server)"
    )
    min_new_tokens: int = Field(0, ge=0)
    num_beams: int = Field(1, ge=1, description="beam search width (do_sample=false)")
    num_return_sequences: int = Field(1, ge=1, description="outputs: best beams, or independent samples")
    do_sample: StrictBool = Field(False, description="sample instead of beam search")
    temperature: float = Field(
        1.0, ge=MIN_TEMPERATURE, le=100, allow_inf_nan=False, description="sampling only"
    )
    top_p: float = Field(1.0, ge=MIN_TOP_P, le=1, allow_inf_nan=False, description="sampling only")
    seed: Seed = None
    hmm_weight: HmmWeight = 1.0
    length_penalty: LengthPenalty = 1.0
    suffix: str | None = Field(
        None,
        description="infilling: text the generated span must be followed by (up to the server's "
        "max_suffix_chars, 32,000 by default): the LM writes its first word, in any tokenisation, the rest is "
        "attached as text, and the HMM conditions on all of it; the constraint is judged on the span, which "
        "`text` returns",
    )
    stop: str | list[str] = Field(
        default_factory=list,
        description="stop strings: the text ends before the first one (it is judged, and returned, without it)",
    )
    return_full_text: StrictBool = Field(
        True, description="with a suffix: return `full_text` (span + suffix) beside `text` (false: omit it)"
    )
    stream: StrictBool = Field(
        False, description="Server-Sent Events: `token` events, then one `result` event"
    )

    _check_prompt = field_validator("prompt")(check_unicode)

    def to_spec(self, settings: Settings) -> GenerationSpec:
        """The validated generation: server limits, the parsed constraint and DecodeParams (which holds the
        rules across fields), each failure a 422 naming the body field."""
        check_limits(settings, prompt=self.prompt, suffix=self.suffix, max_new_tokens=self.max_new_tokens,
                     min_new_tokens=self.min_new_tokens, num_beams=self.num_beams,
                     num_return_sequences=self.num_return_sequences)  # fmt: skip
        constraint = resolve_constraint(self.keywords, self.constraint, settings)
        decoding = {name: getattr(self, name) for name in DECODE_FIELDS if name in type(self).model_fields}
        decoding["max_new_tokens"] = self.max_new_tokens or min(
            DEFAULT_MAX_NEW_TOKENS, settings.max_new_tokens
        )
        return GenerationSpec(self.prompt, constraint, decode_params(settings, decoding, {}))


class Match(BaseModel):
    keyword: str
    start: int
    end: int


class Output(BaseModel):
    text: str
    token_ids: list[int]
    constraint_satisfied: bool
    finish_reason: Literal["eos", "stop", "length"] = Field(
        description="eos: the model ended (or the suffix was completed); stop: a stop string; length: the horizon"
    )
    logprob: float = Field(description="LM log-likelihood of the continuation (with a suffix: see `ranking`)")
    full_text: str | None = Field(
        None,
        description="with a suffix: span + suffix (null without a suffix, or with `return_full_text: false`)",
    )
    ranking: str | None = Field(
        None,
        description="with a suffix: what `logprob` covers and beams are ranked by: `span+suffix` (the LM's "
        "context holds prompt, span and suffix), `span+junction` (span and the suffix's first word), "
        "`span+junction|fim` (the LM saw the suffix in a fill-in-the-middle prompt)",
    )
    matches: list[Match] = Field(
        default_factory=list, description="character spans of the keywords found in `text` (not under `not`)"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Timings(BaseModel):
    queue_ms: float
    dfa_ms: float
    precompute_ms: float
    decode_ms: float
    total_ms: float


class KeywordForms(BaseModel):
    keyword: str
    case: Literal["natural", "sensitive", "any"]
    polarity: Literal["required", "forbidden"]
    forms: list[str] = Field(description="the surface forms the keyword accepts (casefolded for case `any`)")


class GenerateResponse(BaseModel):
    id: str
    model: str
    outputs: list[Output]
    usage: Usage
    timings: Timings
    dfa_states: int | None = Field(None, description="states of the constraint's token automaton")
    guide: Literal["exact", "factored", "lazy"] | None = Field(
        None, description="which guide ran: exact, factored past the exact guide's budget, or lazy past the "
        "explicit automaton's (the constraint holds either way; docs/method.md §5.9-5.10)"
    )  # fmt: skip
    cached: bool
    keywords: list[KeywordForms] = Field(
        default_factory=list,
        description=f"what each keyword of the constraint accepts (the first {KEYWORD_FORMS_SHOWN})",
    )


class ErrorDetail(BaseModel):
    type: str
    message: str
    path: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------------------------------------- checks


def _err(loc: tuple, msg: str, value: Any = None, kind: str = "value_error") -> dict:
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}


def raise_problems(errors: list[dict]) -> None:
    if errors:
        raise RequestValidationError(errors)


def body_error(loc: tuple, msg: str, value: Any = None, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([_err(loc, msg, value, kind)])


def _walk_strings(value: Any, loc: tuple, depth: int = 0) -> tuple | None:
    """The location of the first string with invalid Unicode, if any (depth-bounded, iterative over lists)."""
    if depth > 64:
        return None
    if isinstance(value, str):
        return None if valid_unicode(value) else loc
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and not valid_unicode(key):
            return loc
        found = _walk_strings(item, (*loc, key), depth + 1)
        if found is not None:
            return found
    return None


def resolve_constraint(
    keywords: list[str] | None, constraint: ConstraintSpec | None, settings: Settings
) -> Constraint:
    """Parse `keywords` / `constraint` with the constraint language's parser; errors carry the exact path."""
    if keywords is not None and constraint is not None:
        raise body_error(("constraint",), "give either keywords or constraint, not both", None, "conflict")
    if keywords is None and constraint is None:
        raise body_error(
            ("constraint",), "a constraint is required: give `keywords` or `constraint`", None, "missing"
        )
    if keywords is not None:
        spec: Any = {"keywords": keywords}
        base: tuple = ("keywords",)
        if len(keywords) > settings.max_keywords:
            raise body_error(base, f"at most {settings.max_keywords} keywords", len(keywords), "too_long")
    else:
        spec, base = constraint, ("constraint",)
    bad = _walk_strings(keywords if keywords is not None else spec, base)
    if bad is not None:
        raise body_error(bad, UNICODE_PROBLEM, None, "string_unicode")
    try:
        parsed = parse_constraint(spec)
    except ConstraintError as err:
        loc = constraint_path_to_loc(err.path)[1:]  # drop the leading "constraint"
        if keywords is not None:
            loc = loc[1:] if loc and loc[0] == "keywords" else loc
        raise body_error((*base, *loc), err.message, None, err.error_type) from err
    except RecursionError as err:
        raise body_error(base, "nested too deeply", None, "invalid_constraint") from err
    required, forbidden = keywords_by_polarity(parsed)
    if len(required) > settings.max_keywords:
        raise body_error(
            base, f"at most {settings.max_keywords} keywords (got {len(required)})", None, "too_long"
        )
    if len(forbidden) > settings.max_forbidden:
        message = f"at most {settings.max_forbidden} forbidden keywords (got {len(forbidden)})"
        raise body_error(base, message, None, "too_long")
    for word in required + forbidden:
        for text in (word.text, *word.variants):
            if len(text) > settings.max_keyword_chars:
                raise body_error(base, f"keyword longer than {settings.max_keyword_chars} characters: "
                                 f"{text[:40]!r}...", None, "too_long")  # fmt: skip
    return parsed


def decode_params(settings: Settings, decoding: dict[str, Any], field_names: dict[str, str]) -> DecodeParams:
    """DecodeParams with the server's compile limits; its validation failures as 422s on the body field."""
    try:
        return DecodeParams(
            **decoding, max_states=settings.max_states, time_budget_s=settings.compile_time_budget_s,
            guide=settings.guide, guide_budget_bytes=settings.guide_budget_bytes,
            guide_budget_gflops=settings.guide_budget_gflops, guide_table_dtype=settings.guide_table_dtype,
        )  # fmt: skip
    except DecodingError as err:
        field, message = field_error(err, field_names)
        raise body_error((field,), message, decoding.get(err.field)) from err


def check_limits(settings: Settings, **fields: Any) -> None:
    """Server limits on prompt length, horizon and beams, as 422s on the given body fields."""
    errors = []
    caps = {
        "prompt": settings.max_prompt_chars,
        "suffix": settings.max_suffix_chars,
        "max_new_tokens": settings.max_new_tokens,
        "max_tokens": settings.max_new_tokens,
        "max_completion_tokens": settings.max_new_tokens,
        "min_new_tokens": settings.max_new_tokens,
        "min_tokens": settings.max_new_tokens,
        "num_beams": settings.max_beams,
        "num_return_sequences": settings.max_beams,
        "n": settings.max_beams,
        "best_of": settings.max_beams,
    }
    for name, value in fields.items():
        if value is None:
            continue
        cap = caps[name]
        if name in ("prompt", "suffix"):
            if len(value) > cap:
                errors.append(_err((name,), f"at most {cap} characters", len(value), "string_too_long"))
        elif value > cap:
            errors.append(_err((name,), f"must be <= {cap} on this server", value, "less_than_equal"))
    raise_problems(errors)
