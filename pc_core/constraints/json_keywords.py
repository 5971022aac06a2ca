"""Reading JSON Schema keywords for the translator of json_schema.py: which keywords are annotations, enum /
const values, numeric bounds across drafts, allOf merged key by key, and integral floats by draft."""

from __future__ import annotations

from typing import Any

from pc_core.errors import ConstraintError

ANNOTATIONS = {
    "title", "description", "default", "examples", "example", "$schema", "$id", "id", "$comment", "readOnly",
    "writeOnly", "deprecated", "definitions", "$defs", "nullable", "discriminator", "$anchor", "contentMediaType",
    "contentEncoding", "markdownDescription",
}  # fmt: skip


def integral_floats(root: Any) -> bool:
    """Whether 1.0 is an integer under the root's draft (not in drafts 3 and 4, as `jsonschema` reads them)."""
    import jsonschema

    cls = jsonschema.validators.validator_for(root, default=jsonschema.Draft202012Validator)
    return cls not in (jsonschema.Draft3Validator, jsonschema.Draft4Validator)


def finite_values(schema: dict) -> list | None:
    """The values an `enum` / `const` of the schema (or of one of its allOf branches) allows, or None."""
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return schema["enum"]
    for branch in schema.get("allOf", []) if isinstance(schema.get("allOf"), list) else []:
        found = finite_values(branch) if isinstance(branch, dict) else None
        if found is not None:
            return found
    return None


def harmless(key: str, value: Any) -> bool:
    """Refused keywords whose value constrains nothing."""
    return (key == "uniqueItems" and value is False) or (
        key in ("minProperties", "minContains") and value == 0
    )


def read_bound(inclusive: Any, exclusive: Any, pick: Any) -> tuple[float | None, bool]:
    """(bound, exclusive?) from draft 4 (flag) or draft 6+ (number) keywords."""
    if isinstance(exclusive, bool):
        return inclusive, exclusive and inclusive is not None
    if exclusive is None:
        return inclusive, False
    if inclusive is None:
        return exclusive, True
    best = pick(inclusive, exclusive)
    return best, best == exclusive and (best != inclusive or pick is max)


def merge(a: Any, b: Any, path: str) -> Any:
    """allOf of two schemas as one, where they combine key by key; else a ConstraintError. Properties and
    additionalProperties combine together: a name one side lists and the other does not meets the other's
    additionalProperties (as JSON Schema evaluates each side on its own)."""
    if b is True or b == {}:
        return a
    if a is True or a == {}:
        return b
    if a is False or b is False:
        return False
    if not isinstance(b, dict) or not isinstance(a, dict):
        raise ConstraintError(path, "expected a schema object")
    out = dict(a)
    for key, value in b.items():
        if key in ANNOTATIONS or key in ("properties", "additionalProperties") or key not in out:
            out.setdefault(key, value)
        elif key == "required":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key == "type":
            ta = [out[key]] if isinstance(out[key], str) else out[key]
            tb = [value] if isinstance(value, str) else value
            both = [t for t in ta if t in tb or (t == "integer" and "number" in tb)]
            both += [t for t in tb if t == "integer" and "number" in ta and t not in both]
            out[key] = both
        elif out[key] != value:
            raise ConstraintError(
                f"{path}.{key}", "allOf branches that disagree on this keyword are not supported"
            )
    if any(k in side for side in (a, b) for k in ("properties", "additionalProperties")):
        pa, pb = a.get("properties", {}), b.get("properties", {})
        xa, xb = a.get("additionalProperties", True), b.get("additionalProperties", True)
        out["properties"] = {
            name: merge(pa.get(name, xa), pb.get(name, xb), f"{path}.properties.{name}")
            for name in [*pa, *[n for n in pb if n not in pa]]
        }
        out["additionalProperties"] = merge(xa, xb, f"{path}.additionalProperties")
    return out
