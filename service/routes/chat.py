"""OpenAI-compatible `POST /v1/chat/completions`: the prompt is the model's chat template applied to
`messages` (`tokenizer.apply_chat_template(..., add_generation_prompt=True)`), and the constraint (`constraint`
or `keywords`, extra body fields) applies to the assistant's reply. A model whose tokenizer has no chat
template answers 400 (`code` "chat_template_missing"); `/v1/models` says whether chat is available
(`capabilities.chat`). Fields, errors and streaming are those of `/v1/completions` (routes/openai.py), in the
chat shapes: `message` / `delta` instead of `text`, `logprobs: {"content": [...]}`, `chat.completion.chunk`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service import serving
from service.deps import RateLimit, RuntimeDep
from service.errors import ServiceError
from service.json_body import JSONRoute
from service.openai_responses import ChatCompletionResponse
from service.openai_schemas import ChatCompletionRequest
from service.routes.openai import (
    FINISH,
    OPENAI_ERRORS,
    check_model,
    chunk,
    error_event,
    token_logprobs,
    usage,
)
from service.serving import Result, Stream
from service.sse import SSE_HEADERS, sse

router = APIRouter(prefix="/v1", tags=["openai"], route_class=JSONRoute)


def chat_logprobs(tokenizer: Any, output: dict, as_ids: bool = False) -> dict[str, Any]:
    """OpenAI's chat `logprobs` object: per generated token its text, guided logprob, UTF-8 bytes and the
    top alternatives (`as_ids`: vLLM's "token_id:<id>" names, and their bytes, as vLLM does)."""

    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [
        {**item(text, logprob), "top_logprobs": [item(a, lp) for a, lp in top]}
        for text, logprob, top in token_logprobs(tokenizer, output, as_ids)
    ]
    return {"content": content}


@router.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **OPENAI_ERRORS},
    summary="OpenAI-compatible chat completion under a constraint (the model's chat template)",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep, _: RateLimit
) -> object:
    check_model(body, runtime)
    runtime.require_engine()
    tokenizer = runtime.tokenizer
    prompt = body.prompt_text(tokenizer)
    generation = body.to_spec(runtime.limits, prompt)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": runtime.settings.served_model}  # fmt: skip

    def finished(output: dict) -> dict[str, Any]:
        as_ids = body.return_tokens_as_token_ids
        return {
            "logprobs": chat_logprobs(tokenizer, output, as_ids) if body.logprobs else None,
            "finish_reason": FINISH[output["finish_reason"]],
            "constraint_satisfied": output["constraint_satisfied"],
        }

    try:
        if body.stream:
            stream = await Stream.open(runtime, request, generation)
            chunks = _chunks(stream, head, body.n, body.include_usage, finished)
            return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)
        [result] = await serving.answer(runtime, request, [generation])
    except ServiceError as err:
        if err.path == "prompt":  # the prompt here is what the template made of the messages
            err.path = "messages"
        raise
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": out["text"], "refusal": None},
            **finished(out),
        }
        for i, out in enumerate(result.outputs)
    ]
    return {**head, "object": "chat.completion", "choices": choices, "usage": usage([result])}


async def _chunks(
    stream: Stream, head: dict, n: int, include_usage: bool, finished: Any
) -> AsyncIterator[str]:
    head = {**head, "object": "chat.completion.chunk"}

    def delta(index: int, content: dict) -> dict[str, Any]:
        return {"index": index, "delta": content, "logprobs": None, "finish_reason": None}

    for i in range(n):  # OpenAI's first chunk of a choice names the role
        yield chunk(head, [delta(i, {"role": "assistant", "content": ""})])
    result: Result | None = None
    async for kind, item in stream.events():
        if kind == "token":
            yield chunk(head, [delta(item.index, {"content": item.text})])
        elif kind == "result":
            result = item
            for i, out in enumerate(item.outputs):
                yield chunk(head, [{**delta(i, {}), **finished(out)}])
        else:
            yield error_event(item)
    if include_usage and result is not None:
        yield chunk(head, [], usage=usage([result]))
    yield sse("[DONE]")
