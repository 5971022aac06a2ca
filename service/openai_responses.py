"""Response bodies of the OpenAI endpoint family (`/v1/completions`, `/v1/chat/completions`, `/v1/models`), in
OpenAI's shapes plus pcgen's `constraint_satisfied`; the request bodies are in openai_schemas.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None
    constraint_satisfied: bool | None = Field(None, description="pcgen extension: the independent re-check")


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


class ChatLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(ChatLogprob):
    top_logprobs: list[ChatLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class ChatReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatReply
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]
    constraint_satisfied: bool = Field(description="pcgen extension: the independent re-check")


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class Capabilities(BaseModel):
    completions: bool = True
    chat: bool = Field(description="the tokenizer has a chat template, so /v1/chat/completions works")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pcgen"
    max_model_len: int | None = Field(None, description="the LM's context, in tokens")
    max_new_tokens: int | None = Field(
        None, description="the cap on max_tokens: the settings' and the context's"
    )
    capabilities: Capabilities | None = Field(None, description="null until the model is loaded")
    hmm: dict[str, Any]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
