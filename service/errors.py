"""Errors the service answers with, and the JSON shape they all share:

    {"error": {"type": "...", "message": "...", "path": "..."}}

The library's errors carry an `ErrorKind` (pc_core/errors.py); `HTTP_STATUS` below is the one place a kind
becomes a status, and `classify` the one function that applies it (where the engine's work comes back:
service/serving.py).

Schema validation errors (422) keep FastAPI's `detail` list (each entry with its `loc` path) and add the same
`error` object, naming the first problem.

The OpenAI endpoint family (`/v1/*`) answers every error in OpenAI's shape instead (`openai_shaped`), so the
OpenAI SDKs raise their typed errors with `param` set:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "..."}}

an invalid request there is a 400 (OpenAI's status, where the native API answers 422); other statuses stay.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pc_core.errors import ConstraintError, ErrorKind, PcgenError
from pc_core.params import DECODE_FIELDS, DecodingError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with an HTTP status and a machine-readable type. `path` names the request field at fault
    (client errors); server faults carry the request id instead, so logs and report can be matched."""

    status = 500
    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        error_type: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.error_type = error_type or self.error_type
        self.status = status or self.status
        self.headers = headers or {}
        self.request_id: str | None = None

    def body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message, self.path, self.request_id)


class BadRequest(ServiceError):
    status, error_type = 422, "invalid_request"


class QueueFull(ServiceError):
    status, error_type = 429, "queue_full"


class RateLimited(ServiceError):
    status, error_type = 429, "rate_limited"


class NotFound(ServiceError):
    status, error_type = 404, "not_found"


class Timeout(ServiceError):
    status, error_type = 504, "timeout"


class Unavailable(ServiceError):
    status, error_type = 503, "unavailable"


class ClientGone(Exception):
    """The client disconnected; nothing is sent back."""


def error_body(
    error_type: str, message: str, path: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": _text(message, 2000)}
    if path is not None:
        error["path"] = _text(path)
    if request_id is not None:
        error["request_id"] = _text(request_id)
    return {"error": error}


class BodyError(StarletteHTTPException):
    """A body that is JSON but breaks a limit (service/json_body.py): answered like a validation error (422,
    `detail`, `error`)."""

    def __init__(self, errors: list[dict]) -> None:
        super().__init__(422, errors[0]["msg"])
        self.errors = errors


# Every kind of pcgen error (pc_core.errors.ErrorKind) as HTTP: its status, and whose fault it is. The one
# place a library error becomes HTTP. Request faults name the field (a constraint path, or the body field of a
# decoding parameter); server faults (the models do not fit together, a guide failure) are 5xx with the
# request id, never blamed on the client.
HTTP_STATUS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.TIMEOUT: (504, "client"),  # the request's own deadline
    ErrorKind.COMPILE_BACKLOG_FULL: (429, "client"),
    ErrorKind.UNSATISFIABLE_CONSTRAINT: (422, "client"),
    ErrorKind.CONSTRAINT_TOO_COMPLEX: (422, "client"),
    ErrorKind.INVALID_CONSTRAINT: (422, "client"),
    ErrorKind.INVALID_PARAMETERS: (422, "client"),
    ErrorKind.MODEL_MISMATCH: (500, "server"),
    ErrorKind.MODEL_ERROR: (500, "server"),
    ErrorKind.GUIDE_ERROR: (500, "server"),
    ErrorKind.INTERNAL: (500, "server"),
}


OPENAI_PREFIX = "/v1/"
# OpenAI's error `type` by HTTP status (the category; pcgen's own error type goes in `code`)
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


def openai_shaped(url_path: str, status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, body) as the endpoint family at `url_path` answers an error given in the native shape: on
    `/v1/*`, OpenAI's object with `param` the body field at fault (`max_tokens`, `constraint.all[1].word_at`),
    `code` pcgen's error type, and 400 for what the native API answers with 422."""
    if not url_path.startswith(OPENAI_PREFIX):
        return status, body
    native = body["error"]
    status = 400 if status == 422 else status
    param = native.get("path")
    if param is not None:
        param = None if param == "body" else param.removeprefix("body.")
    message, code = native["message"], native["type"]
    first = (body.get("detail") or [None])[0]
    if isinstance(first, dict) and first.get("type") == "extra_forbidden":  # OpenAI's words for it
        message, code = f"Unrecognized request argument supplied: {param}", "unknown_parameter"
    kind = "server_error" if status >= 500 else OPENAI_TYPES.get(status, "invalid_request_error")
    error = {"message": message, "type": kind, "param": param, "code": code}
    if "request_id" in native:
        error["request_id"] = native["request_id"]
    return status, {"error": error}


def error_response(request: Request, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    status, body = openai_shaped(request.url.path, status, body)
    return JSONResponse(body, status_code=status, headers=headers)


def classify(err: BaseException, field_names: dict[str, str] | None = None) -> ServiceError:
    """The ServiceError for an exception raised while preparing or decoding a request (HTTP_STATUS by its
    kind). `field_names` maps DecodeParams fields to the request body's names for them (`max_new_tokens` ->
    `max_tokens`)."""
    if isinstance(err, ServiceError):
        return err
    if not isinstance(err, PcgenError):
        return ServiceError("internal server error")
    status, fault = HTTP_STATUS[err.kind]
    error_type = err.kind.value
    if fault == "server":
        log.error("server fault (%s): %s", error_type, err)
        return ServiceError(
            f"server error ({error_type}); see the server log", error_type=error_type, status=status
        )
    if isinstance(err, (DecodingError, ConstraintError)):
        path, message = field_error(err, field_names or {})
        return BadRequest(message, path=path, error_type=error_type, status=status)
    headers = {"Retry-After": "1"} if status == 429 else None
    return ServiceError(str(err), error_type=error_type, status=status, headers=headers)


def field_error(err: DecodingError | ConstraintError, field_names: dict[str, str]) -> tuple[str, str]:
    """(path, message) of a parameter or constraint error as the request body names things: DecodeParams'
    fields written with the body's names (`max_tokens` for max_new_tokens)."""
    if isinstance(err, DecodingError):  # its message writes the other parameters it names as {name}
        message = err.message.format_map({k: field_names.get(k, k) for k in DECODE_FIELDS})
        return field_names.get(err.field, err.field), message
    return field_names.get(err.path, err.path), _with_body_names(err.message, field_names)


def body_problem(loc: tuple, msg: str, value: Any = None, kind: str = "value_error") -> dict:
    """One validation entry on a body field (FastAPI's 422 `detail` shape; `loc` below "body")."""
    return {"type": kind, "loc": ("body", *loc), "msg": msg, "input": value}


def body_error(loc: tuple, msg: str, value: Any = None, kind: str = "value_error") -> RequestValidationError:
    """A 422 naming one body field."""
    return RequestValidationError([body_problem(loc, msg, value, kind)])


def raise_problems(problems: list[dict]) -> None:
    """A 422 listing every entry (`body_problem`), when there is one."""
    if problems:
        raise RequestValidationError(problems)


def _with_body_names(message: str, field_names: dict[str, str]) -> str:
    """The message with DecodeParams' field names written as the request body's (max_tokens=3)."""
    if not field_names:
        return message
    names = re.compile(r"\b(" + "|".join(map(re.escape, field_names)) + r")\b")
    return names.sub(lambda match: field_names[match.group()], message)


def constraint_path_to_loc(path: str) -> tuple[str | int, ...]:
    """`constraint.all[2].word_at` -> ("constraint", "all", 2, "word_at")."""
    loc: list[str | int] = []
    for part in path.split("."):
        while "[" in part:
            head, _, rest = part.partition("[")
            if head:
                loc.append(head)
            index, _, part = rest.partition("]")
            loc.append(int(index) if index.isdigit() else index)
        if part:
            loc.append(part)
    return tuple(loc)


def loc_to_path(loc: tuple | list) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


CONSTRAINT_ERROR_TYPES = {kind.value for kind in (ErrorKind.INVALID_CONSTRAINT, ErrorKind.CONSTRAINT_TOO_COMPLEX,
                                                    ErrorKind.UNSATISFIABLE_CONSTRAINT)}  # fmt: skip


def _text(value: str, limit: int = 200) -> str:
    """JSON-safe: lone surrogates escaped, long strings cut."""
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= limit else value[:limit] + "..."


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 2**63 else _text(str(value))
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, (bytes, bytearray)):
        return _text(bytes(value[:200]).decode("latin-1"))
    return f"<{type(value).__name__}>"  # containers: never echoed (size, depth)


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail` entries, made safe to serialise whatever the input was."""
    out = []
    for e in errors:
        entry: dict[str, Any] = {
            "type": _text(str(e.get("type", "value_error"))),
            "loc": [part if isinstance(part, int) else _text(str(part)) for part in e.get("loc", ())],
            "msg": _text(str(e.get("msg", "")), 500),
        }
        if "input" in e:
            entry["input"] = _scalar(e["input"])
        if isinstance(e.get("ctx"), dict):
            entry["ctx"] = {_text(str(k)): _scalar(v) if not isinstance(v, Exception) else _text(str(v))
                            for k, v in e["ctx"].items()}  # fmt: skip
        out.append(entry)
    return out


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = validation_details(exc.errors())
    # constraint errors found while parsing the body count like those the engine finds (service/engine.py)
    runtime = getattr(request.app.state, "runtime", None)
    for entry in errors if runtime is not None else ():
        if entry["type"] in CONSTRAINT_ERROR_TYPES:
            runtime.metrics.constraint_errors.labels(entry["type"]).inc()
    first = errors[0] if errors else {"msg": "invalid request", "loc": [], "type": ""}
    kind = first["type"] if first["type"] in CONSTRAINT_ERROR_TYPES else "validation_error"
    body = {"detail": errors, **error_body(kind, first["msg"], loc_to_path(first["loc"]))}
    return error_response(request, 422, body)


async def _http_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc, BodyError):
        return await _validation_handler(request, RequestValidationError(exc.errors))
    kinds = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
             408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}  # fmt: skip
    message = _text(exc.detail) if isinstance(exc.detail, str) else "error"
    body = {"detail": message, **error_body(kinds.get(exc.status_code, "http_error"), message)}
    return error_response(request, exc.status_code, body, getattr(exc, "headers", None))


async def _service_handler(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        exc.request_id = getattr(request.state, "request_id", None)
    return error_response(request, exc.status, exc.body(), exc.headers)


async def _internal_handler(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    request_id = getattr(request.state, "request_id", None)
    body = error_body("internal_error", "internal server error", None, request_id)
    return error_response(request, 500, body)


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(ServiceError, _service_handler)
    app.add_exception_handler(Exception, _internal_handler)
