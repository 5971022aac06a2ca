"""The server's request limits, one object (TGI's shape): `ServerLimits`, built once from the settings and the
loaded model's context, holds every cap a request is checked against, and request validation asks it and
nothing else. The rules across fields are DecodeParams' (pc_core.params); the caps of this server are here:

- sizes: the prompt and the infilling suffix in characters, the horizon, beams and returned sequences
  (`check`, on the body's own field names: OpenAI's `max_tokens`, `n`, `best_of`);
- the constraint: required and forbidden keywords, one keyword's length (`check_keywords`);
- compiling and guiding it: states, time, the guide's budget, carried into DecodeParams (`decode_params`);
- the model's context: prompt tokens plus the horizon (`check_context`, once the prompt is tokenized; the
  horizon's cap already leaves room for one prompt token).

Each failure is a 422 naming the body field (a RequestValidationError), or for the context a 400. The body's
size in bytes (`max_body_bytes`) is the transport's limit, checked before any of this (service/middleware.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from pc_core.constraints.nodes import Keyword
from pc_core.params import DecodeParams, DecodingError
from service.errors import BadRequest, body_error, body_problem, field_error, raise_problems
from service.settings import Settings

log = logging.getLogger(__name__)

# body field -> the ServerLimits cap it is checked against (the native, completions and chat names)
CAPS = {
    "prompt": "max_prompt_chars",
    "suffix": "max_suffix_chars",
    "max_new_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
    "min_new_tokens": "max_new_tokens",
    "min_tokens": "max_new_tokens",
    "num_beams": "max_beams",
    "num_return_sequences": "max_beams",
    "n": "max_beams",
    "best_of": "max_beams",
}
TEXTS = ("prompt", "suffix")  # capped in characters; the other fields by value


@dataclass(frozen=True)
class ServerLimits:
    """Every cap this server puts on a request: the settings' fields of the same names."""

    max_prompt_chars: int
    max_suffix_chars: int
    max_new_tokens: int  # lowered to the model's context less one prompt token once the model is loaded
    max_beams: int
    max_keywords: int
    max_forbidden: int
    max_keyword_chars: int
    max_states: int
    compile_time_budget_s: float
    guide: str
    guide_budget_bytes: int | None
    guide_budget_gflops: float | None
    guide_table_dtype: str
    guide_emission_dtype: str

    @classmethod
    def from_settings(cls, settings: Settings, max_positions: int | None = None) -> ServerLimits:
        """The settings' caps; with the model's context, a horizon that leaves room for one prompt token."""
        horizon = settings.max_new_tokens
        if max_positions is not None and horizon > max_positions - 1:
            horizon = max(1, max_positions - 1)
            log.info("max_new_tokens capped at %d by the model's context of %d", horizon, max_positions)
        caps = {f.name: getattr(settings, f.name) for f in fields(cls)}  # the settings' fields of those names
        return cls(**{**caps, "max_new_tokens": horizon})

    def cap(self, field: str) -> int:
        """The cap on a body field (a name in CAPS)."""
        return getattr(self, CAPS[field])

    def check(self, **sent: Any) -> None:
        """Prompt and suffix length, horizon and beams, as 422s on the given body fields (None: not sent)."""
        problems = []
        for name, value in sent.items():
            if value is None:
                continue
            cap = self.cap(name)
            if name in TEXTS:
                if len(value) > cap:
                    problems.append(body_problem((name,), f"at most {cap} characters", len(value),
                                                 "string_too_long"))  # fmt: skip
            elif value > cap:
                problems.append(body_problem((name,), f"must be <= {cap} on this server", value,
                                             "less_than_equal"))  # fmt: skip
        raise_problems(problems)

    def horizon(self, asked: int | None, default: int) -> int:
        """The horizon a request gets: what it asked for (checked by `check`), else the endpoint's default
        within this server's cap."""
        return asked if asked is not None else min(default, self.max_new_tokens)

    def check_keywords(self, required: list[Keyword], forbidden: list[Keyword], base: tuple) -> None:
        """A parsed constraint's keywords: how many are required and forbidden, and each one's length (every
        variant's), as 422s on `base` (the body field that held the constraint)."""
        if len(required) > self.max_keywords:
            message = f"at most {self.max_keywords} keywords (got {len(required)})"
            raise body_error(base, message, None, "too_long")
        if len(forbidden) > self.max_forbidden:
            message = f"at most {self.max_forbidden} forbidden keywords (got {len(forbidden)})"
            raise body_error(base, message, None, "too_long")
        for word in required + forbidden:
            for text in (word.text, *word.variants):
                if len(text) > self.max_keyword_chars:
                    message = f"keyword longer than {self.max_keyword_chars} characters: {text[:40]!r}..."
                    raise body_error(base, message, None, "too_long")

    def decode_params(self, decoding: dict[str, Any], field_names: dict[str, str]) -> DecodeParams:
        """DecodeParams with this server's compile and guide limits; its own validation failures as 422s on
        the body's field (`field_names`: DecodeParams field -> the body's name for it)."""
        try:
            return DecodeParams(
                **decoding, max_states=self.max_states, time_budget_s=self.compile_time_budget_s,
                guide=self.guide, guide_budget_bytes=self.guide_budget_bytes,
                guide_budget_gflops=self.guide_budget_gflops, guide_table_dtype=self.guide_table_dtype,
                guide_emission_dtype=self.guide_emission_dtype,
            )  # fmt: skip
        except DecodingError as err:
            field, message = field_error(err, field_names)
            raise body_error((field,), message, decoding.get(err.field)) from err


def check_context(
    max_positions: int | None, prompt_tokens: int, max_new_tokens: int, horizon: str | None = None
) -> None:
    """The prompt plus the horizon must fit the LM's context of `max_positions` tokens (None: no bound),
    checked once the prompt is tokenized (service/engine.py); the error names the field at fault, as the
    request body names it (`horizon`: OpenAI's max_tokens)."""
    if max_positions is None or max(1, prompt_tokens) + max_new_tokens <= max_positions:
        return
    horizon = horizon or "max_new_tokens"
    if max_new_tokens >= max_positions:  # too long whatever the prompt
        path, detail = horizon, f"must be < the model's context of {max_positions} tokens"
    else:
        path = "prompt"
        detail = (f"the prompt ({prompt_tokens} tokens) plus {horizon} ({max_new_tokens}) exceeds the "
                  f"model's context of {max_positions} tokens")  # fmt: skip
    raise BadRequest(detail, path=path, error_type="context_length_exceeded")
