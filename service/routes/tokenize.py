"""vLLM's `POST /tokenize` and `POST /detokenize` with the served model's tokenizer, in vLLM's shapes, so that a
client can check that its tokenizer is the server's (what `pcgen distill sample --server` does before it
trusts sampled token ids) and count tokens before it sends a prompt."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from service.deps import RateLimit, RuntimeDep
from service.errors import BadRequest
from service.json_body import JSONRoute
from service.routes.openai import check_model

router = APIRouter(tags=["openai"], route_class=JSONRoute)
MAX_DETOKENIZE = 100_000  # token ids in one /detokenize request


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="must be the served model id when given")
    prompt: str
    add_special_tokens: StrictBool = Field(True, description="as the tokenizer adds them (e.g. a BOS)")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int | None = Field(description="the LM's context, in tokens")
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: list[StrictInt] = Field(max_length=MAX_DETOKENIZE)


class DetokenizeResponse(BaseModel):
    prompt: str


@router.post(
    "/tokenize", response_model=TokenizeResponse, summary="The served tokenizer's ids of a text (vLLM's)"
)
async def tokenize(body: TokenizeRequest, runtime: RuntimeDep, _: RateLimit) -> dict:
    check_model(body, runtime)
    runtime.limits.check(prompt=body.prompt)
    runtime.require_engine()
    ids = runtime.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return {"count": len(ids), "max_model_len": runtime.max_positions, "tokens": ids, "token_strs": None}


@router.post("/detokenize", response_model=DetokenizeResponse, summary="The text of token ids (vLLM's)")
async def detokenize(body: DetokenizeRequest, runtime: RuntimeDep, _: RateLimit) -> dict:
    check_model(body, runtime)
    runtime.require_engine()
    size = len(runtime.tokenizer)
    bad = next((t for t in body.tokens if not 0 <= t < size), None)
    if bad is not None:
        raise BadRequest(f"token id {bad} is not in the vocabulary (0..{size - 1})", path="tokens")
    return {"prompt": runtime.tokenizer.decode(body.tokens)}
