"""`POST /generate`: the native endpoint.

Streaming (`"stream": true`) answers `text/event-stream`:

    event: token     data: {"index": 0, "text": " The dog", "token_ids": [...]}    (settled text, per output)
    event: result    data: {...the same object as the JSON response...}            (once, last)
    event: error     data: {"error": {"type": "timeout", "message": "..."}}        (instead of result)

For beam search text is settled when all beams agree on it; the rest arrives with the end of the search.
Errors found before decoding starts (validation, constraint, queue full) are plain JSON responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service import serving
from service.deps import RateLimit, RuntimeDep
from service.json_body import JSONRoute
from service.response_body import generation_body
from service.schemas import ErrorResponse, GenerateRequest, GenerateResponse
from service.serving import Result, Stream
from service.sse import SSE_HEADERS, sse

router = APIRouter(tags=["generation"], route_class=JSONRoute)

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong API key"},
    413: {"model": ErrorResponse, "description": "body too large"},
    422: {"description": "invalid request (`detail` with field paths) or constraint error (`error.type`)"},
    429: {"model": ErrorResponse, "description": "queue full or rate limited (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "models not loaded yet"},
    504: {"model": ErrorResponse, "description": "request deadline passed"},
}


def response_body(result: Result, request_id: str, model: str, constraint: Any, full_text: bool) -> dict:
    """The JSON answer: service/response_body.py's, which `pcgen generate --json` prints too."""
    body = generation_body(result.outputs, result.usage, result.timings, result.dfa_states, result.guide,
                           constraint, full_text)  # fmt: skip
    return {"id": request_id, "model": model, **body, "cached": result.cached}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
    summary="Generate text that satisfies a constraint",
)
async def post_generate(body: GenerateRequest, request: Request, runtime: RuntimeDep, _: RateLimit) -> object:
    """Every returned output satisfies the constraint within `max_new_tokens` (`constraint_satisfied` is the
    independent re-check). Deterministic requests (beam search, or sampling with a `seed`) are cached."""
    generation = body.to_spec(runtime.limits)
    request_id = request.state.request_id
    model = runtime.settings.served_model
    if body.stream:
        stream = await Stream.open(runtime, request, generation)
        return StreamingResponse(
            _events(stream, request_id, model, generation.constraint, body.return_full_text),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )
    [result] = await serving.answer(runtime, request, [generation])
    return response_body(result, request_id, model, generation.constraint, body.return_full_text)


async def _events(
    stream: Stream, request_id: str, model: str, constraint: Any, full_text: bool
) -> AsyncIterator[str]:
    async for kind, item in stream.events():
        if kind == "token":
            yield sse({"index": item.index, "text": item.text, "token_ids": item.token_ids}, "token")
        elif kind == "result":
            yield sse(response_body(item, request_id, model, constraint, full_text), "result")
        else:
            yield sse(item.body(), "error")
