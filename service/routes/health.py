"""Probes and metrics: `GET /health/live`, `GET /health/ready` (alias `GET /health`), `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.auth import bearer_token
from service.deps import RuntimeDep
from service.metrics import CONTENT_TYPE
from service.runtime import Runtime

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Readiness: LM and HMM loaded and the warm-up generation passed",
    responses={503: {"description": "not ready (same body)"}},
)
@router.get(
    "/health",
    summary="Readiness (alias of /health/ready, where vLLM and TGI users look)",
    responses={503: {"description": "not ready (same body)"}},
)
async def ready(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Answers from state the server already holds (Redis is probed in the background), so a hung Redis
    cannot slow the probe. Public callers see the status; with API keys configured, the details (models,
    device, Redis, errors) need a key. Redis does not decide readiness: without it the cache and the rate
    limits fail open."""
    body: dict = {"status": "ready" if runtime.ready else ("error" if runtime.error else "loading")}
    if _may_see_details(request, runtime):
        engine = runtime.engine
        body |= {
            "lm_loaded": runtime.lm is not None,
            "hmm_loaded": runtime.hmm is not None,
            "warmup": runtime.warmup,
            "redis": runtime.health.state,
            "model": runtime.settings.served_model,
            "device": runtime.device,
            "queue_depth": engine.queue_depth if engine else 0,
            "active_requests": engine.active if engine else 0,
        }
        if runtime.error:
            body["error"] = runtime.error
        if runtime.health.state == "down" and runtime.health.last_error:
            body["redis_error"] = runtime.health.last_error
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


def _may_see_details(request: Request, runtime: Runtime) -> bool:
    """Without API keys everyone may; with keys, a request that presents a valid one."""
    checker = request.app.state.key_checker
    if not checker.enabled:
        return True
    token = bearer_token(request.scope.get("headers", []))
    return token is not None and checker.valid(token)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
