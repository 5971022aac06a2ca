"""Structured output on the OpenAI-compatible endpoints: OpenAI's `response_format` and vLLM's guided_json /
guided_regex / guided_choice / structured_outputs, turned into pcgen constraints (pc_core.constraints.patterns)
and combined with the request's own `constraint` / `keywords` by `all`.

    response_format: {"type": "text"}                                     nothing
                     {"type": "json_object"}                              {"json": true}
                     {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
    guided_json: <schema>   guided_regex: "..."   guided_choice: [...]
    structured_outputs: {"json": <schema>} | {"regex": "..."} | {"choice": [...]}

Errors name the body's own path: `response_format.json_schema.schema.properties.tags.uniqueItems: not
supported` (a 422, before anything is compiled or decoded).
"""

from __future__ import annotations

from typing import Any

from pc_core.constraints import parse_constraint
from pc_core.constraints.nodes import All, Constraint
from pc_core.errors import ConstraintError
from service.errors import body_error, constraint_path_to_loc

FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "structured_outputs")


def structured_constraints(body: Any) -> list[tuple[dict, str]]:
    """(the constraint as JSON, the body path its errors are reported under) for each structured-output
    field."""
    out: list[tuple[dict, str]] = []
    fmt = getattr(body, "response_format", None)
    if fmt is not None:
        out += _response_format(fmt)
    if getattr(body, "guided_json", None) is not None:
        out.append(({"json_schema": body.guided_json}, "guided_json"))
    if getattr(body, "guided_regex", None) is not None:
        out.append(({"regex": body.guided_regex}, "guided_regex"))
    if getattr(body, "guided_choice", None) is not None:
        out.append(({"choice": body.guided_choice}, "guided_choice"))
    outputs = getattr(body, "structured_outputs", None)
    if outputs is not None:
        if (
            not isinstance(outputs, dict)
            or len(outputs) != 1
            or next(iter(outputs)) not in ("json", "regex", "choice")
        ):
            raise body_error(("structured_outputs",), "expected one of {json}, {regex}, {choice}", None)
        (kind, value), = outputs.items()  # fmt: skip
        key = {"json": "json_schema", "regex": "regex", "choice": "choice"}[kind]
        out.append(({key: value}, f"structured_outputs.{kind}"))
    return out


def _response_format(fmt: Any) -> list[tuple[dict, str]]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text" and len(fmt) == 1:
        return []
    if kind == "json_object" and len(fmt) == 1:
        return [({"json": True}, "response_format")]
    if kind == "json_schema" and set(fmt) <= {"type", "json_schema"}:
        wrapper = fmt.get("json_schema")  # OpenAI's {name, schema, strict}
        if (
            not isinstance(wrapper, dict)
            or "schema" not in wrapper
            or not set(wrapper) <= {"name", "schema", "strict", "description"}
        ):
            raise body_error(("response_format", "json_schema"), "expected {name, schema, strict}", None)
        return [({"json_schema": wrapper["schema"]}, "response_format.json_schema.schema")]
    raise body_error(
        ("response_format",), 'expected {"type": "text" | "json_object" | "json_schema", ...}', None
    )


def parse_structured(raw: dict, path: str) -> Constraint:
    """Parse one structured-output constraint (JSON); a ConstraintError becomes a 422 at the body's path."""
    try:
        return parse_constraint(raw)
    except ConstraintError as err:
        kind = next(iter(raw))
        inner = err.path[len(f"constraint.{kind}") :] if err.path.startswith(f"constraint.{kind}") else ""
        loc = constraint_path_to_loc(path + inner)
        raise body_error(loc, err.message, None, err.error_type) from err


def with_structured(body: Any, constraint: Constraint | None) -> Constraint | None:
    """The request's constraint and its structured-output fields together (`all`), or either alone."""
    parts = [parse_structured(raw, path) for raw, path in structured_constraints(body)]
    if not parts:
        return constraint
    if constraint is not None:
        parts.insert(0, constraint)
    return parts[0] if len(parts) == 1 else All(tuple(parts))
