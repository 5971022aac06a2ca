"""OpenAI-compatible `POST /v1/completions` and `GET /v1/models`.

The constraint travels as an extra body field (`constraint` or `keywords`). Parameter mapping:
`max_tokens` -> max_new_tokens, `min_tokens` -> min_new_tokens, `n` -> outputs; `temperature` 0 -> beam search
over `best_of` beams (default `n`; 1 = greedy), `temperature` > 0 -> `n` samples with `top_p` and `seed` (temperatures below 0.001 count as 0.001, top_p
below 1e-6 as 1e-6).
`finish_reason` is "stop" when the model ended the text (EOS) and "length" at `max_tokens`.

Streaming sends `data: {chunk}` lines in the OpenAI chunk shape (text deltas with `finish_reason: null`, then
one chunk per choice with its `finish_reason`, then a usage chunk when `stream_options.include_usage`), and
ends with `data: [DONE]`. An error during the stream is sent as `data: {"error": {...}}` before `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service import serving
from service.deps import RateLimit, RuntimeDep
from service.errors import NotFound
from service.generation import GenerationSpec
from service.routes.generate import ERRORS
from service.schemas import CompletionRequest, CompletionResponse, ModelList
from service.serving import Result, Stream
from service.settings import Settings
from service.sse import SSE_HEADERS, sse

router = APIRouter(prefix="/v1", tags=["openai"])
FINISH = {"eos": "stop", "length": "length"}


def _spec(body: CompletionRequest, settings: Settings) -> GenerationSpec:
    if body.model is not None and body.model != settings.served_model:
        raise NotFound(f"model {body.model!r} is not served here; see /v1/models", path="model",
                       error_type="model_not_found")  # fmt: skip
    return body.to_generation(settings)


def _usage(result: Result) -> dict:
    u = result.usage
    return {**u, "total_tokens": u["prompt_tokens"] + u["completion_tokens"]}


@router.post(
    "/completions",
    response_model=CompletionResponse,
    response_model_exclude_none=False,
    responses={200: {"content": {"text/event-stream": {}}}, 404: {"description": "unknown model"}, **ERRORS},
    summary="OpenAI-compatible text completion under a constraint",
)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep, _: RateLimit) -> object:
    spec = _spec(body, runtime.settings)
    model = runtime.settings.served_model
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    echo = body.prompt_text if body.echo else ""
    if body.stream:
        stream = await Stream.open(runtime, request, spec)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = _chunks(stream, completion_id, created, model, echo, body.n, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
    result = await serving.answer(runtime, request, spec)
    choices = [
        {
            "text": echo + out["text"],
            "index": i,
            "logprobs": None,
            "finish_reason": FINISH[out["finish_reason"]],
            "constraint_satisfied": out["constraint_satisfied"],
        }
        for i, out in enumerate(result.outputs)
    ]
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": choices, "usage": _usage(result)}  # fmt: skip


async def _chunks(
    stream: Stream, completion_id: str, created: int, model: str, echo: str, n: int, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(choices: list[dict], **extra: object) -> str:
        return sse({"id": completion_id, "object": "text_completion", "created": created, "model": model,
                    "choices": choices, **extra})  # fmt: skip

    def choice(index: int, text: str, finish: str | None = None, **extra: object) -> dict:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish, **extra}

    if echo:
        for i in range(n):
            yield chunk([choice(i, echo)])
    async for kind, item in stream.events():
        if kind == "token":
            yield chunk([choice(item.index, item.text)])
        elif kind == "result":
            for i, out in enumerate(item.outputs):
                yield chunk([choice(i, "", FINISH[out["finish_reason"]],
                                    constraint_satisfied=out["constraint_satisfied"])])  # fmt: skip
            if include_usage:
                yield chunk([], usage=_usage(item))
        else:
            yield sse(item.body())
    yield sse("[DONE]")


@router.get("/models", response_model=ModelList, summary="The served model (OpenAI list shape)")
async def models(runtime: RuntimeDep) -> dict:
    hmm = runtime.hmm
    card = {
        "id": runtime.settings.served_model,
        "object": "model",
        "created": runtime.created,
        "owned_by": "pcgen",
        "max_model_len": runtime.max_positions,
        "hmm": {
            "source": runtime.settings.hmm,
            "loaded": hmm is not None,
            "hidden_size": hmm.hidden_size if hmm is not None else None,
            "vocab_size": hmm.vocab_size if hmm is not None else None,
            "fingerprint": runtime.fingerprints.get("hmm"),
        },
    }
    return {"object": "list", "data": [card]}
