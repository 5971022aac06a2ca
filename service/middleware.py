"""One pure-ASGI middleware in front of the app (works with streaming responses and disconnects):

- request IDs: `X-Request-ID` echoed when well-formed, generated otherwise; returned on every response;
- API keys (service.auth): 401 before anything else runs;
- body size: 413 from `Content-Length` before reading, and while reading bodies sent without it; a body that
  does not arrive within `body_timeout_s` gets 408 (a client cannot hold a connection open with a trickle);
- per-request metrics (route template, status) and one structured log line (no prompt, no key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import KeyChecker, bearer_token, key_id, unauthorized_body
from service.client_identity import client_address
from service.errors import error_body, openai_shaped
from service.metrics import Metrics

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED = 499  # nginx's convention for "client closed the request"


class ServiceMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        keys: KeyChecker,
        public: frozenset[str],
        max_body_bytes: int,
        known_paths: frozenset[str] = frozenset(),
        body_timeout_s: float = 10.0,
        trusted_proxies: tuple = (),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.keys = keys
        self.public = public
        self.max_body_bytes = max_body_bytes
        self.known_paths = known_paths
        self.body_timeout_s = body_timeout_s
        self.trusted_proxies = trusted_proxies  # service.client_identity.parse_networks of the setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        request_id = _header(headers, b"x-request-id")
        if request_id is None or not REQUEST_ID.match(request_id):
            request_id = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        client = scope.get("client")
        state["identity"] = "ip:" + client_address(
            client[0] if client else None, headers, self.trusted_proxies
        )
        status: list[int | None] = [None]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = request_id
                for name, value in state.get("rate_limit_headers", {}).items():  # set by the rate limit
                    response_headers.setdefault(name, value)
            await send(message)

        path = scope.get("path", "")
        try:
            refusal = self._refusal(headers, path, state)
            if refusal is not None:
                await _send_json(send_with_id, path, *refusal)
                return
            await self.app(scope, self._limited(receive), send_with_id)
        except HTTPException as exc:  # raised by the limited receive outside FastAPI's handlers
            if status[0] is None and exc.status_code == 413:
                await _send_json(send_with_id, path, 413, _too_large(self.max_body_bytes))
            elif status[0] is None and exc.status_code == 408:
                await _send_json(send_with_id, path, 408, error_body("request_timeout", exc.detail))
            else:
                raise
        except Exception:
            if status[0] is None:
                status[0] = 500
            raise
        finally:
            code = state.get("final_status") or (status[0] if status[0] is not None else CLIENT_CLOSED)
            self._record(scope, request_id, code, time.perf_counter() - started)

    def _refusal(self, headers: list, path: str, state: dict) -> tuple | None:
        """(status, body, headers) for a request refused before the app sees it: no or a wrong API key (401),
        a Content-Length that is not a number (400) or over the limit (413). Sets the key's identity."""
        if self.keys.enabled and path not in self.public:
            token = bearer_token(headers)
            if token is None or not self.keys.valid(token):
                self.metrics.rejected.labels("unauthorized").inc()
                message = "missing API key" if token is None else "invalid API key"
                return 401, unauthorized_body(message), {"WWW-Authenticate": "Bearer"}
            state["identity"] = key_id(token)
        length = _header(headers, b"content-length")
        if length is not None and not length.isdigit():
            return 400, error_body("bad_request", "invalid Content-Length"), None
        if length is not None and int(length) > self.max_body_bytes:
            self.metrics.rejected.labels("too_large").inc()
            return 413, _too_large(self.max_body_bytes), None
        return None

    def _record(self, scope: Scope, request_id: str, code: int, elapsed: float) -> None:
        """The request in the metrics (route template, status) and the access log (no prompt, no key)."""
        route = self._route(scope)
        self.metrics.requests.labels(route, str(code)).inc()
        self.metrics.request_latency.labels(route).observe(elapsed)
        log.info(
            "request_id=%s method=%s route=%s status=%s ms=%.1f",
            request_id,
            scope.get("method"),
            route,
            code,
            elapsed * 1000,
        )

    def _limited(self, receive: Receive) -> Receive:
        """`receive` with the body's size and arrival time bounded (413, 408); counted as rejections."""
        limit, seen, done = self.max_body_bytes, 0, False

        async def limited() -> Message:
            nonlocal seen, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                self.metrics.rejected.labels("body_timeout").inc()
                raise HTTPException(
                    408, f"request body not received within {self.body_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if seen > limit:
                    self.metrics.rejected.labels("too_large").inc()
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        return limited

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        template = getattr(route, "path", None)
        if isinstance(template, str):
            return template
        path = scope.get("path", "")
        return path if path in self.known_paths else "unmatched"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _too_large(limit: int) -> dict[str, Any]:
    return error_body("payload_too_large", f"request body larger than {limit} bytes")


async def _send_json(
    send: Send, url_path: str, status: int, body: dict, headers: dict[str, str] | None = None
) -> None:
    """An error answered here, before the app: in the shape of the endpoint family of `url_path`."""
    status, body = openai_shaped(url_path, status, body)
    raw = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": raw})
