"""FastAPI dependencies, as typed aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def rate_limit(request: Request, runtime: RuntimeDep) -> None:
    """Per API key (or client IP without keys); 429 with Retry-After when spent. The X-RateLimit-* headers
    go on the response (the middleware adds them)."""
    request.state.rate_limit_headers = await runtime.limiter.check(request.state.identity)


RateLimit = Annotated[None, Depends(rate_limit)]
