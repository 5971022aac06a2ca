"""Request bodies of the OpenAI endpoint family (`/v1/completions`, `/v1/chat/completions`), and their
conversion to what pcgen generates (`to_spec` / `to_specs`: `GenerationSpec`); the response bodies are in
openai_responses.py.

What each OpenAI field does here:

- generation: `max_tokens` (chat: or `max_completion_tokens`) -> max_new_tokens, `n`, `temperature` 0 -> beam
  search over `best_of` beams (default `n`; 1 = greedy), `temperature` > 0 -> `n` samples with `top_p` and
  `seed`, `stop`, `suffix` (completions), `logit_bias`, `presence_penalty`, `frequency_penalty` (applied to the
  LM's logits before the guide; a bias of -100 is an exact ban), `logprobs` (completions: the top-k of the
  guided distribution; chat: `logprobs` + `top_logprobs`), `echo` (completions), `stream`, `stream_options`;
- accepted and ignored, because they do not change the text: `user` (chat also `metadata`, `store`,
  `service_tier`, `parallel_tool_calls`, `prompt_cache_key`, `safety_identifier`);
- accepted only when they ask for nothing (chat): `tools` (empty), `tool_choice` ("none"), `functions`,
  `function_call`; anything else there is a 400 naming the field;
- structured output (service/structured.py): `response_format` (text, json_object, json_schema) and vLLM's
  `guided_json`, `guided_regex`, `guided_choice`, `structured_outputs`, combined with pcgen's constraint by `all`;
- pcgen's own: `constraint` or `keywords` (without either: the LM's own distribution, no HMM and no guide, in
  the same batches; with a `suffix`, the guide writes it under a constraint that always holds), `min_tokens`,
  `hmm_weight`, `length_penalty`, `best_of` on chat too;
- vLLM's: `return_tokens_as_token_ids` (logprobs name each token as "token_id:<id>", so a client gets the
  exact token ids: what distillation needs); `top_k`, `min_p`, `repetition_penalty` accepted when off (-1 or
  0, 0, 1: what a vLLM client sends to turn them off), else a 400 naming the field;
- any other field is a 400 naming it (a misspelt `temprature` is never silently ignored).

Errors name the field the caller sent (`max_tokens`, not max_new_tokens): `field_names` maps DecodeParams'
fields to the body's names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from pc_core.constraints.nodes import WordCount
from pc_core.params import MAX_LOGPROBS, MIN_TEMPERATURE, MIN_TOP_P
from service.errors import BadRequest, body_error, body_problem, raise_problems
from service.generation import GenerationSpec
from service.limits import ServerLimits
from service.schemas import (
    ConstraintField,
    HmmWeight,
    Keywords,
    LengthPenalty,
    Seed,
    check_unicode,
    resolve_constraint,
)
from service.structured import with_structured

MAX_PROMPTS = 32  # prompts in one /v1/completions request (each is a generation of its own)
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
CHAT_MAX_TOKENS = 32  # pcgen's default for chat (OpenAI's, "up to the context", would make every guide huge)

TokenIds = list[StrictInt]
VLLM_OFF = {"top_k": (-1, 0), "min_p": (0,), "repetition_penalty": (1,)}  # vLLM's fields: their "off" values


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class OpenAIRequest(BaseModel):
    """The fields both OpenAI endpoints share, pcgen's constraint fields included."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="must be the served model id when given")
    max_tokens: int | None = Field(None, ge=1, description="the horizon (capped by the server)")
    min_tokens: int = Field(0, ge=0, description="pcgen extension: no EOS before this many tokens")
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False, description="0: beam search")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(1, ge=1)
    best_of: int | None = Field(None, ge=1, description="beam width with temperature 0 (default n)")
    seed: Seed = None
    stop: str | list[str] | None = Field(None, description="the text ends before the first stop string")
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias added to the LM's logits; -100 bans the token"
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="accepted and ignored")
    # pcgen extensions
    keywords: Keywords = None
    constraint: ConstraintField = None
    hmm_weight: HmmWeight = 1.0
    length_penalty: LengthPenalty = 1.0
    # structured output (service/structured.py): OpenAI's response_format, vLLM's guided_* / structured_outputs
    response_format: dict[str, Any] | None = None
    guided_json: dict[str, Any] | bool | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    structured_outputs: dict[str, Any] | None = None
    # vLLM extensions
    return_tokens_as_token_ids: StrictBool = Field(
        False, description='vLLM extension: logprobs name each token "token_id:<id>" instead of its text'
    )
    top_k: int | None = Field(None, description="vLLM extension, accepted when off (-1 or 0)")
    min_p: float | None = Field(None, description="vLLM extension, accepted when off (0)")
    repetition_penalty: float | None = Field(None, description="vLLM extension, accepted when off (1)")

    FIELD_NAMES: ClassVar[dict[str, str]] = {
        "max_new_tokens": "max_tokens",
        "min_new_tokens": "min_tokens",
        "num_return_sequences": "n",
        "num_beams": "best_of",
        "do_sample": "temperature",
    }

    @property
    def field_names(self) -> dict[str, str]:
        """DecodeParams field -> this body's name for it (error paths and messages)."""
        return self.FIELD_NAMES

    @property
    def requested_max_tokens(self) -> int | None:
        """The horizon the caller asked for (None: the endpoint's default)."""
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def problems(self) -> list[dict]:
        """Combinations the schema cannot express, as validation entries."""
        errors = []
        if self.best_of is not None and self.temperature > 0 and self.best_of != self.n:
            message = "with temperature > 0, best_of must equal n (or be omitted)"
            errors.append(body_problem(("best_of",), message, self.best_of))
        for field, off in VLLM_OFF.items():  # what vLLM clients send to turn them off
            value = getattr(self, field)
            if value is not None and value not in off:
                message = f"not supported by pcgen; accepted only when off ({' or '.join(map(str, off))})"
                errors.append(body_problem((field,), message, value))
        return errors

    def _decode_fields(
        self, limits: ServerLimits, default_max_tokens: int, logprobs: int | None
    ) -> dict[str, Any]:
        """DecodeParams' fields from OpenAI's: temperature 0 -> beam search over best_of beams (default n),
        temperature > 0 -> n samples; the server's limits checked on the body's fields."""
        raise_problems(self.problems())
        asked = self.requested_max_tokens
        limits.check(**{self.field_names["max_new_tokens"]: asked}, min_tokens=self.min_tokens, n=self.n,
                     best_of=self.best_of)  # fmt: skip
        max_new = limits.horizon(asked, default_max_tokens)
        sampling = self.temperature > 0
        return {
            "max_new_tokens": max_new,
            # with the default horizon, min_tokens cannot exceed it (the caller did not choose the horizon)
            "min_new_tokens": self.min_tokens if asked is not None else min(self.min_tokens, max_new),
            "num_beams": 1 if sampling else (self.best_of or self.n),
            "num_return_sequences": self.n,
            "do_sample": sampling,
            "temperature": max(self.temperature, MIN_TEMPERATURE) if sampling else 1.0,
            "top_p": max(self.top_p, MIN_TOP_P),
            "seed": self.seed,
            "hmm_weight": self.hmm_weight,
            "length_penalty": self.length_penalty,
            "stop": self.stop if self.stop is not None else (),
            "logit_bias": self._token_biases(),
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logprobs": logprobs,
        }

    def _token_biases(self) -> dict[int, float]:
        """OpenAI's `logit_bias` keys are token ids written as strings."""
        biases = {}
        for key, bias in (self.logit_bias or {}).items():
            if not key.isascii() or not key.isdigit():
                raise body_error(
                    ("logit_bias",), f"keys are token ids (decimal digits), got {key[:40]!r}", None
                )
            biases[int(key)] = bias
        return biases

    def _to_spec(self, limits: ServerLimits, prompt: str | tuple[int, ...], decoding: dict) -> GenerationSpec:
        """The generation of `prompt` with these decoding fields (from `_decode_fields`)."""
        constraint = None  # no constraint: the LM's own distribution (pc_core.unguided)
        if self.keywords is not None or self.constraint is not None:
            constraint = resolve_constraint(self.keywords, self.constraint, limits)
        elif decoding.get("suffix") is not None:  # infilling needs the guide: under a constraint that holds
            constraint = WordCount(0, None)
        constraint = with_structured(self, constraint)  # response_format / guided_*: all(...) with the rest
        params = limits.decode_params(decoding, self.field_names)
        return GenerationSpec(prompt, constraint, params, self.field_names)


# ---------------------------------------------------------------------------------------------- completions


class CompletionRequest(OpenAIRequest):
    """OpenAI `/v1/completions` plus pcgen's `constraint` / `keywords` (without either, the LM's own text)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"prompt": "The", "max_tokens": 12, "keywords": ["dog", "frisbee"], "temperature": 0}
            ]
        },
    )

    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        "", description=f"a string, token ids, or a list of either (at most {MAX_PROMPTS}: a choice set each)"
    )
    echo: StrictBool = Field(False, description="the prompt is prepended to each choice's text")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="per generated token: its logprob and the top-k alternatives"
    )
    suffix: str | None = Field(None, description="infilling: the text that follows the completion")

    @field_validator("prompt")
    @classmethod
    def _prompts_are_valid(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list is neither a prompt nor a list of prompts")
            if len(value) > MAX_PROMPTS and not isinstance(value[0], int):
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                check_unicode(item)
            elif isinstance(item, int) and item < 0 or isinstance(item, list) and any(t < 0 for t in item):
                raise ValueError("token ids are >= 0")
        return value

    @property
    def prompts(self) -> list[str | tuple[int, ...]]:
        """One entry per prompt: text, or token ids."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if isinstance(value[0], int):
            return [tuple(value)]
        return [item if isinstance(item, str) else tuple(item) for item in value]

    def problems(self) -> list[dict]:
        errors = super().problems()
        if self.echo and self.logprobs is not None:
            message = "echo with logprobs would need the prompt's logprobs, which pcgen does not compute"
            errors.append(body_problem(("echo",), message, True))
        return errors

    def to_specs(self, limits: ServerLimits) -> list[GenerationSpec]:
        """One generation per prompt, each with OpenAI's parameters as DecodeParams."""
        for text in (p for p in self.prompts if isinstance(p, str)):
            limits.check(prompt=text)
        decoding = self._decode_fields(limits, COMPLETIONS_MAX_TOKENS, self.logprobs)
        decoding["suffix"] = self.suffix
        return [self._to_spec(limits, prompt, decoding) for prompt in self.prompts]


# ---------------------------------------------------------------------------------------------- chat


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def as_template_input(self) -> dict[str, Any]:
        """What the chat template receives: text parts joined by newlines (like vLLM)."""
        content = self.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        message = {"role": self.role, "content": content or ""}
        for extra in ("name", "tool_call_id"):
            if getattr(self, extra) is not None:
                message[extra] = getattr(self, extra)
        return message


# accepted only when they ask for nothing: what they would ask for is not something pcgen does
OFF = {
    "tools": lambda v: v in (None, []),
    "functions": lambda v: v in (None, []),
    "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"),
}


class ChatCompletionRequest(OpenAIRequest):
    """OpenAI `/v1/chat/completions` plus pcgen's `constraint` / `keywords` (optional). The prompt is the
    model's chat template applied to `messages`; the constraint applies to the assistant's reply."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [{"role": "user", "content": "Tell me about your dog."}],
                    "max_tokens": 16,
                    "keywords": ["frisbee"],
                }
            ]
        },  # fmt: skip
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: StrictBool = Field(
        False, description="per generated token: its logprob under the guided distribution"
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="alternatives per token (logprobs)"
    )
    # accepted and ignored: they do not change the text
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    service_tier: str | None = None
    parallel_tool_calls: StrictBool | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # accepted only when they ask for nothing (OFF)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    function_call: str | dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_are_valid_unicode(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for message in messages:
            check_unicode(message.as_template_input()["content"])
        return messages

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def field_names(self) -> dict[str, str]:
        horizon = "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"
        return {**self.FIELD_NAMES, "max_new_tokens": horizon, "logprobs": "top_logprobs"}

    def problems(self) -> list[dict]:
        errors = super().problems()

        def problem(field: str, message: str) -> None:
            errors.append(body_problem((field,), message, None))

        for field, off in OFF.items():
            if not off(getattr(self, field)):
                problem(field, "not supported by pcgen (it generates text under a constraint)")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            problem("max_completion_tokens", "differs from max_tokens: give one of them")
        if self.top_logprobs is not None and not self.logprobs:
            problem("top_logprobs", "needs logprobs: true")
        return errors

    def prompt_text(self, tokenizer: Any) -> str:
        """The model's chat template applied to the messages, ready for the assistant's reply."""
        if getattr(tokenizer, "chat_template", None) is None:
            raise BadRequest(
                "this model's tokenizer has no chat template, so it cannot be prompted with messages; "
                "use /v1/completions with a prompt",
                error_type="chat_template_missing",
            )
        messages = [m.as_template_input() for m in self.messages]
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template rejects messages by raising (e.g. role order)
            raise BadRequest(f"the chat template rejected the messages: {err}", path="messages") from err

    def to_spec(self, limits: ServerLimits, prompt: str) -> GenerationSpec:
        """The reply to `prompt` (from `prompt_text`), with OpenAI's parameters as DecodeParams."""
        if len(prompt) > limits.max_prompt_chars:
            message = f"the chat template makes a prompt of more than {limits.max_prompt_chars} characters"
            raise body_error(("messages",), message, len(prompt), "string_too_long")
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self._to_spec(limits, prompt, self._decode_fields(limits, CHAT_MAX_TOKENS, logprobs))
