"""OpenAI-compatible `POST /v1/completions` and `GET /v1/models`, and what the chat endpoint (routes/chat.py)
shares with them. Which OpenAI fields do what: service/openai_schemas.py.

The constraint travels as an extra body field (`constraint` or `keywords`; with the OpenAI SDKs, in
`extra_body`). `finish_reason` is "stop" when the text ended (EOS, the suffix written, or a stop string) and
"length" at `max_tokens`. A list of prompts gives `n` choices per prompt, numbered as OpenAI does (prompt i's
j-th choice has index i * n + j); the prompts are generated concurrently, so they share decoding steps.

Streaming sends `data: {chunk}` lines in the OpenAI chunk shape (text deltas with `finish_reason: null`, then
one chunk per choice with its `finish_reason` (and its `logprobs`, all of them at once: the guided
log-probabilities of a beam are only known when the search ends), then a usage chunk when
`stream_options.include_usage`), and ends with `data: [DONE]`. An error during the stream is sent as
`data: {"error": {...}}` in OpenAI's error shape before `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from pc_core.constraints import decode_continuation
from service import serving
from service.deps import RateLimit, RuntimeDep
from service.errors import NotFound, ServiceError, openai_shaped
from service.json_body import JSONRoute
from service.openai_responses import CompletionResponse, ModelList
from service.openai_schemas import CompletionRequest, OpenAIRequest
from service.routes.generate import ERRORS
from service.runtime import Runtime
from service.serving import Result
from service.sse import SSE_HEADERS, sse

router = APIRouter(prefix="/v1", tags=["openai"], route_class=JSONRoute)
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # pcgen's finish reasons -> OpenAI's
OPENAI_ERRORS = {
    **{status: entry for status, entry in ERRORS.items() if status != 422},
    400: {"description": 'invalid request: `{"error": {"message", "type", "param", "code"}}`'},
    404: {"description": "unknown model"},
}


# ---------------------------------------------------------------------------------------------- shared


def check_model(body: OpenAIRequest, runtime: Runtime) -> None:
    if body.model is not None and body.model != runtime.settings.served_model:
        raise NotFound(f"model {body.model!r} is not served here; see /v1/models", path="model",
                       error_type="model_not_found")  # fmt: skip


def usage(results: list[Result]) -> dict[str, int]:
    prompt = sum(r.usage["prompt_tokens"] for r in results)
    completion = sum(r.usage["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chunk(head: dict, choices: list[dict], **extra: object) -> str:
    """One streamed chunk in OpenAI's shape: the response's head (id, object, created, model), these choices,
    and `extra` (the usage chunk's `usage`)."""
    return sse({**head, "choices": choices, **extra})


def error_event(err: ServiceError) -> str:
    """An error inside a stream, in OpenAI's shape (the status was sent already, as 200)."""
    return sse(openai_shaped(router.prefix + "/", err.status, err.body())[1])


def token_logprobs(
    tokenizer: Any, output: dict, as_ids: bool = False
) -> list[tuple[str, float, list[tuple[str, float]]]]:
    """An output's guided logprobs with token texts: (text, logprob, [(alternative, logprob), ...]). A token's
    text is what it adds to a text it continues; special tokens show their name (EOS: `<|endoftext|>`).
    `as_ids` (vLLM's return_tokens_as_token_ids): "token_id:<id>" instead, which names the token exactly."""
    special = set(tokenizer.all_special_ids)

    def text(token: int) -> str:
        if as_ids:
            return f"token_id:{token}"
        if token in special:
            return tokenizer.convert_ids_to_tokens(token)
        return decode_continuation(tokenizer, [token])

    return [
        (text(token), logprob, [(text(a), lp) for a, lp in top]) for token, logprob, top in output["logprobs"]
    ]


# ---------------------------------------------------------------------------------------------- completions


def completion_logprobs(tokenizer: Any, output: dict, offset: int, as_ids: bool = False) -> dict[str, Any]:
    """OpenAI's completion `logprobs` object: one entry per generated token; `text_offset` counts characters
    of the choice's text (from `offset`: the echoed prompt's length; with `as_ids` too, where vLLM counts
    the "token_id:<id>" names). Each `top_logprobs` entry holds the chosen token too, like vLLM's."""
    tokens, token_logprobs_, top_logprobs, offsets = [], [], [], []
    texts = token_logprobs(tokenizer, output) if as_ids else None
    for i, (name, logprob, top) in enumerate(token_logprobs(tokenizer, output, as_ids)):
        tokens.append(name)
        token_logprobs_.append(logprob)
        top_logprobs.append({**dict(top), name: logprob})
        offsets.append(offset)
        offset += len(texts[i][0] if texts is not None else name)
    return {"tokens": tokens, "token_logprobs": token_logprobs_, "top_logprobs": top_logprobs,
            "text_offset": offsets}  # fmt: skip


def _echoes(body: CompletionRequest, tokenizer: Any) -> list[str]:
    """Per prompt, the text `echo` prepends (token prompts decoded)."""
    if not body.echo:
        return ["" for _ in body.prompts]
    return [p if isinstance(p, str) else tokenizer.decode(list(p)) for p in body.prompts]


@router.post(
    "/completions",
    response_model=CompletionResponse,
    response_model_exclude_none=False,
    responses={200: {"content": {"text/event-stream": {}}}, **OPENAI_ERRORS},
    summary="OpenAI-compatible text completion under a constraint",
)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep, _: RateLimit) -> object:
    check_model(body, runtime)
    generations = body.to_specs(runtime.limits)
    runtime.require_engine()
    tokenizer = runtime.tokenizer
    echoes = _echoes(body, tokenizer)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": runtime.settings.served_model}  # fmt: skip

    def choice(index: int, text: str, output: dict | None, echo: str) -> dict[str, Any]:
        out = {"text": text, "index": index, "logprobs": None, "finish_reason": None}
        if output is not None:
            if body.logprobs is not None:
                out["logprobs"] = completion_logprobs(
                    tokenizer, output, len(echo), body.return_tokens_as_token_ids
                )
            out["finish_reason"] = FINISH[output["finish_reason"]]
            out["constraint_satisfied"] = output["constraint_satisfied"]
        return out

    if body.stream:
        streams = await serving.open_streams(runtime, request, generations)
        chunks = _chunks(streams, head, echoes, body.n, body.include_usage, choice)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
    results = await serving.answer(runtime, request, generations)
    choices = [
        choice(i * body.n + j, echoes[i] + out["text"], out, echoes[i])
        for i, result in enumerate(results)
        for j, out in enumerate(result.outputs)
    ]
    return {**head, "choices": choices, "usage": usage(results)}


async def _chunks(
    streams: list[serving.Stream], head: dict, echoes: list[str], n: int, include_usage: bool, choice: Any
) -> AsyncIterator[str]:
    for i, echo in enumerate(echoes):
        if echo:
            for j in range(n):
                yield chunk(head, [choice(i * n + j, echo, None, echo)])
    results: list[Result] = []
    async for position, kind, item in serving.merged_events(streams):
        if kind == "token":
            yield chunk(head, [choice(position * n + item.index, item.text, None, "")])
        elif kind == "result":
            results.append(item)
            for j, out in enumerate(item.outputs):
                yield chunk(head, [choice(position * n + j, "", out, echoes[position])])
        else:
            yield error_event(item)
            break
    else:
        if include_usage:
            yield chunk(head, [], usage=usage(results))
    yield sse("[DONE]")


# ---------------------------------------------------------------------------------------------- models


@router.get("/models", response_model=ModelList, summary="The served model (OpenAI list shape)")
async def models(runtime: RuntimeDep) -> dict:
    hmm, tokenizer = runtime.hmm, runtime.tokenizer
    card = {
        "id": runtime.settings.served_model,
        "object": "model",
        "created": runtime.created,
        "owned_by": "pcgen",
        "max_model_len": runtime.max_positions,
        "max_new_tokens": runtime.limits.max_new_tokens,
        "capabilities": None
        if tokenizer is None
        else {"completions": True, "chat": getattr(tokenizer, "chat_template", None) is not None},
        "hmm": {
            "source": runtime.settings.hmm,
            "loaded": hmm is not None,
            "hidden_size": hmm.hidden_size if hmm is not None else None,
            "vocab_size": hmm.vocab_size if hmm is not None else None,
            "fingerprint": runtime.fingerprints.get("hmm"),
        },
    }
    return {"object": "list", "data": [card]}
