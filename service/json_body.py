"""Request bodies parsed as JSON with limits that name the field: nesting deeper than MAX_DEPTH is a 422 on the
top-level field that holds it (the constraint language allows far less), and integers too long to convert
(Python refuses strings of over 4,300 digits) become infinity, which the field's own validation rejects with
its name. Without this, both were a 400 that named nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from pc_core.cache import LRUCache
from pc_core.errors import ErrorKind
from service.errors import BodyError, ServiceError

MAX_DEPTH = 64
# refusals that cost a compile to find (constraint_too_complex, unsatisfiable_constraint) are the same for the
# same body: a repeat is answered from here, before parsing and validating it again
MEMO_TYPES = frozenset({ErrorKind.CONSTRAINT_TOO_COMPLEX.value, ErrorKind.UNSATISFIABLE_CONSTRAINT.value})
REFUSED: LRUCache[ServiceError] = LRUCache("refused", 2**20, lambda err: 256 + len(err.message))
# and answered after this pause (a tarpit): a client that loops a refused request, never backing off, then
# sends a few a second instead of hundreds, each of which would take the GIL from the decoding of others
REPEAT_REFUSAL_DELAY_S = 0.05
MAX_INT_DIGITS = 64
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def parse(raw: bytes) -> Any:
    _check_depth(raw)
    return json.loads(raw, parse_int=_int)


def _int(text: str) -> int | float:
    if len(text.lstrip("-")) <= MAX_INT_DIGITS:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


def _check_depth(raw: bytes) -> None:
    depth, key = 0, None
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token[:1] == b'"':
            if depth == 1:
                key = token[1:-1].decode("utf-8", "replace")  # the top-level field the nesting is under
        elif token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                loc = ("body",) if key is None else ("body", key)
                message = f"nested more than {MAX_DEPTH} levels deep (a constraint may nest at most 12)"
                raise BodyError([{"type": "too_deep", "loc": loc, "msg": message, "input": None}])
        else:
            depth -= 1


class _BodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """An APIRoute whose request bodies go through `parse`, and whose costly refusals are remembered by body:
    a client looping a rejected 5 KB constraint costs a hash per request, not a parse (and the decoding of
    other clients' requests keeps the GIL)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            body_request = _BodyRequest(request.scope, request.receive)
            key = (request.url.path, hashlib.blake2b(await body_request.body(), digest_size=16).digest())
            known = REFUSED.get(key)
            if known is not None:
                runtime = getattr(request.app.state, "runtime", None)
                if runtime is not None:
                    runtime.metrics.constraint_errors.labels(known.error_type).inc()
                await asyncio.sleep(REPEAT_REFUSAL_DELAY_S)
                raise _copy(known)
            try:
                return await handler(body_request)
            except ServiceError as err:
                if err.error_type in MEMO_TYPES and err.status == 422:
                    REFUSED.put(key, _copy(err))
                raise

        return route


def _copy(err: ServiceError) -> ServiceError:
    """The refusal without its traceback (and request id): what the memo keeps and what a repeat raises."""
    return ServiceError(err.message, path=err.path, error_type=err.error_type, status=err.status,
                        headers=dict(err.headers))  # fmt: skip
