"""Request and response bodies (pydantic), and the checks that depend on the server's settings.

Schema errors are FastAPI 422s whose `detail` entries carry the field path in `loc`; constraint parse errors
are reported the same way, with the constraint's own path appended, e.g.
`["body", "constraint", "all", 2, "word_at"]`. The OpenAI endpoint family's bodies are in
`openai_schemas.py`; they share the checks below.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from pc_core.constraints import Constraint, parse_constraint
from pc_core.constraints.nodes import keywords_by_polarity
from pc_core.errors import ConstraintError
from pc_core.params import DECODE_FIELDS, DEFAULT_MAX_NEW_TOKENS, MIN_TEMPERATURE, MIN_TOP_P, SEED_MAX
from service.errors import body_error, constraint_path_to_loc
from service.generation import GenerationSpec
from service.limits import ServerLimits
from service.response_body import KEYWORD_FORMS_SHOWN

ConstraintJSON = dict[str, Any] | str
UNICODE_PROBLEM = "contains invalid Unicode (a lone surrogate)"

# The bounds of the fields the native and the OpenAI bodies share, written once (the rules that hold across
# fields are DecodeParams'; the server's own caps are ServerLimits', service/limits.py).
Keywords = Annotated[list[str] | None, Field(min_length=1, description="shorthand for {'keywords': [...]}")]
ConstraintField = Annotated[
    ConstraintJSON | None, Field(description="a constraint in the constraint language")
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

    def to_spec(self, limits: ServerLimits) -> GenerationSpec:
        """The validated generation: server limits, the parsed constraint and DecodeParams (which holds the
        rules across fields), each failure a 422 naming the body field."""
        limits.check(prompt=self.prompt, suffix=self.suffix, max_new_tokens=self.max_new_tokens,
                     min_new_tokens=self.min_new_tokens, num_beams=self.num_beams,
                     num_return_sequences=self.num_return_sequences)  # fmt: skip
        constraint = resolve_constraint(self.keywords, self.constraint, limits)
        decoding = {name: getattr(self, name) for name in DECODE_FIELDS if name in type(self).model_fields}
        decoding["max_new_tokens"] = limits.horizon(self.max_new_tokens, DEFAULT_MAX_NEW_TOKENS)
        return GenerationSpec(self.prompt, constraint, limits.decode_params(decoding, {}))


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
    keywords: list[str] | None, constraint: ConstraintJSON | None, limits: ServerLimits
) -> Constraint:
    """Parse `keywords` / `constraint` with the constraint language's parser, within the server's keyword
    limits; errors carry the exact path."""
    if keywords is not None and constraint is not None:
        raise body_error(("constraint",), "give either keywords or constraint, not both", None, "conflict")
    if keywords is None and constraint is None:
        raise body_error(
            ("constraint",), "a constraint is required: give `keywords` or `constraint`", None, "missing"
        )
    if keywords is not None:
        raw: Any = {"keywords": keywords}
        base: tuple = ("keywords",)
    else:
        raw, base = constraint, ("constraint",)
    bad = _walk_strings(keywords if keywords is not None else raw, base)
    if bad is not None:
        raise body_error(bad, UNICODE_PROBLEM, None, "string_unicode")
    try:
        parsed = parse_constraint(raw)
    except ConstraintError as err:
        loc = constraint_path_to_loc(err.path)[1:]  # drop the leading "constraint"
        if keywords is not None:
            loc = loc[1:] if loc and loc[0] == "keywords" else loc
        raise body_error((*base, *loc), err.message, None, err.error_type) from err
    except RecursionError as err:
        raise body_error(base, "nested too deeply", None, "invalid_constraint") from err
    limits.check_keywords(*keywords_by_polarity(parsed), base)
    return parsed
