"""`create_app(settings)`: the FastAPI application `pcgen serve` runs under uvicorn.

    uvicorn --factory service.app:app_from_env      # settings from PCGEN_* environment variables

Layers, outermost first: ServiceMiddleware (request ID, API keys, body size, metrics, access log) -> routes
(request models validate and build a GenerationSpec) -> serving (cache, single-flight, deadline, disconnects)
-> Engine (preparation pool, decoding thread) -> pc_core (prepare, BatchDecoder). docs/architecture.md walks
one request through them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from pc_core.version import __version__, commit
from service import docs_pages, playground
from service.auth import KeyChecker, playground_paths, public_paths
from service.client_identity import parse_networks
from service.errors import ClientGone, install_handlers
from service.limits import CAPS, TEXTS
from service.metrics import Metrics
from service.middleware import CLIENT_CLOSED, ServiceMiddleware
from service.routes import chat, generate, health, openai, tokenize
from service.runtime import Runtime
from service.settings import Settings, short_name

log = logging.getLogger(__name__)
VERSION = __version__
DESCRIPTION = """Constrained text generation: a GPT-2 LM guided by a hidden Markov model, so every output
satisfies its logical constraint (keywords, word positions, order, forbidden words, word counts).

Native `POST /generate`, OpenAI-compatible `POST /v1/completions`, `POST /v1/chat/completions` and
`GET /v1/models`, Server-Sent Events streaming, probes at `/health/live` and `/health/ready`, Prometheus
metrics at `/metrics`. With API keys configured, send `Authorization: Bearer <key>`. Errors:
`{"error": {"type", "message", "path"}}`; on `/v1/*` OpenAI's `{"error": {"message", "type", "param",
"code"}}`, with 400 for invalid requests."""


def create_app(settings: Settings | None = None, load: bool = True) -> FastAPI:
    """The app; its lifespan connects Redis and loads the models (in the background, see `Runtime`).
    `load=False` skips the models (for tests of the HTTP layer)."""
    settings = settings or Settings()
    metrics = Metrics(settings.served_model)
    metrics.set_build_info(VERSION, commit(), short_name(settings.hmm))
    runtime = Runtime(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        listener = _start_metrics_listener(settings, metrics)
        try:
            await runtime.start(load=load)
            try:
                yield
            finally:
                await runtime.stop()
        finally:
            if listener is not None:
                await asyncio.to_thread(_stop_metrics_listener, listener)

    app = FastAPI(title="pcgen", version=VERSION, description=DESCRIPTION, lifespan=lifespan, docs_url=None,
                  redoc_url=None)  # fmt: skip
    docs_pages.install(app)  # /docs and /redoc with local assets: they work offline
    app.state.runtime = runtime
    install_handlers(app)

    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    app.add_exception_handler(ClientGone, client_gone)
    routers = (generate.router, openai.router, chat.router, tokenize.router, health.router)
    for router in routers:
        app.include_router(router)
    if settings.playground:
        playground.install(app)
    keys = KeyChecker(settings.api_keys)
    app.state.key_checker = keys
    known = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
    # from the routers themselves: newer FastAPI wraps included routers, so app.routes does not list them
    paths = (getattr(route, "path", "{") for router in (app.router, *routers) for route in router.routes)
    known |= {path for path in paths if "{" not in path}  # route labels for requests refused before routing
    if settings.playground:
        known |= playground_paths()
    known |= docs_pages.asset_paths()
    # the docs' scripts and styles hold no data: public, like the playground's
    public = public_paths(settings.metrics_public, settings.docs_public, settings.playground)
    public |= docs_pages.asset_paths()
    app.add_middleware(
        ServiceMiddleware,
        metrics=metrics,
        keys=keys,
        public=public,
        max_body_bytes=settings.max_body_bytes,
        known_paths=known,
        body_timeout_s=settings.body_timeout_s,
        trusted_proxies=parse_networks(settings.trusted_proxies.split(",")),
    )
    _customize_openapi(app, runtime, public, keys.enabled)
    return app


def _start_metrics_listener(settings: Settings, metrics: Metrics) -> tuple[Any, threading.Thread] | None:
    """With `metrics_port` set: the app's registry on its own port (same host), without authentication, for a
    Prometheus on the internal network (compose, Kubernetes) while `/metrics` on the API port keeps its keys."""
    if settings.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    host, port = settings.host, settings.metrics_port
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as err:
        raise RuntimeError(
            f"PCGEN_METRICS_PORT / --metrics-port: cannot listen on {host}:{port}: {err}"
        ) from err
    log.info("metrics listener on %s:%s (no authentication)", host, port)
    return server, thread


def _stop_metrics_listener(listener: tuple[Any, threading.Thread]) -> None:
    server, thread = listener
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _limit(
    schema: dict,
    maximum: int | None = None,
    max_length: int | None = None,
    max_items: int | None = None,
    items: dict | None = None,
) -> None:
    """Set JSON-schema bounds on a property, inside anyOf branches too (Optional fields)."""
    for branch in schema.get("anyOf", [schema]):
        kind = branch.get("type")
        if maximum is not None and kind in ("integer", "number"):
            branch["maximum"] = maximum
        if max_length is not None and kind == "string":
            branch["maxLength"] = max_length
        if kind == "array":
            if max_items is not None:
                branch["maxItems"] = max_items
            if items:
                branch.setdefault("items", {}).update(items)


def _customize_openapi(app: FastAPI, runtime: Runtime, public: frozenset[str], bearer: bool) -> None:
    """The OpenAPI document states this server's limits (max_new_tokens as the loaded model allows it, beams,
    prompt and keyword sizes), that a constraint is required, and the Bearer scheme when API keys are
    configured."""
    runtime.on_limits.append(lambda: setattr(app, "openapi_schema", None))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        limits = runtime.limits
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        word = {"minLength": 1, "maxLength": limits.max_keyword_chars, "pattern": r"\w"}
        for name in ("GenerateRequest", "CompletionRequest", "ChatCompletionRequest"):
            model = components.get(name)
            if model is None:
                continue
            props = model.get("properties", {})
            for field in sorted(CAPS.keys() - TEXTS):  # the fields capped by value (ServerLimits.check)
                if field in props:
                    _limit(props[field], maximum=limits.cap(field))
            if "prompt" in props:
                _limit(props["prompt"], max_length=limits.max_prompt_chars)
            if "keywords" in props:
                _limit(props["keywords"], max_items=limits.max_keywords, items=word)
            for field in ("keywords", "constraint"):  # documented as "send one of them" (null is accepted)
                if field in props and "anyOf" in props[field]:
                    branches = [b for b in props[field]["anyOf"] if b.get("type") != "null"]
                    extra = {k: v for k, v in props[field].items() if k not in ("anyOf", "default")}
                    props[field] = (
                        {**branches[0], **extra} if len(branches) == 1 else {"anyOf": branches, **extra}
                    )
            if name == "GenerateRequest":  # the OpenAI endpoints serve requests without a constraint too
                model["anyOf"] = [{"required": ["keywords"]}, {"required": ["constraint"]}]
        if bearer:
            schema["components"].setdefault("securitySchemes", {})["bearerAuth"] = {
                "type": "http",
                "scheme": "bearer",
            }
            schema["security"] = [{"bearerAuth": []}]
            for path, operations in schema.get("paths", {}).items():
                if path in public:
                    for operation in operations.values():
                        operation["security"] = []
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """uvicorn factory: settings from the environment."""
    return create_app(Settings())
