"""Probes and metrics: `GET /health/live`, `GET /health/ready`, `GET /metrics`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import RuntimeDep
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict:
    return {"status": "ok"}


@router.get(
    "/health/ready",
    summary="Readiness: LM and HMM loaded and the warm-up generation passed",
    responses={503: {"description": "not ready (same body)"}},
)
async def ready(runtime: RuntimeDep) -> JSONResponse:
    """Redis is reported ("disabled", "ok" or "down") but does not decide readiness: without it the cache and
    the rate limits fail open."""
    redis = await runtime.health.ping()
    engine = runtime.engine
    body = {
        "status": "ready" if runtime.ready else ("error" if runtime.error else "loading"),
        "lm_loaded": runtime.lm is not None,
        "hmm_loaded": runtime.hmm is not None,
        "warmup": runtime.warmup,
        "redis": redis,
        "model": runtime.settings.served_model,
        "device": runtime.device,
        "queue_depth": engine.queue_depth if engine else 0,
        "active_requests": engine.active if engine else 0,
    }
    if runtime.error:
        body["error"] = runtime.error
    if redis == "down" and runtime.health.last_error:
        body["redis_error"] = runtime.health.last_error
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
