"""JSON Schema to the regex IR (regex.py): the documents a schema allows, as a regular language.

Layout (docs/method.md §3): compact separators (`{"a":1,"b":[1,2]}`) by default, or with whitespace
"flexible" an optional space after `:` and `,`; object properties in the schema's order (required ones
present, optional ones skippable), then any additional properties; strings as JSON writes them (raw
characters except `"`, `\\` and control characters, which are escaped; an additional property's name is any
string but the listed ones, compared decoded). Recursion (`$ref` cycles) is unrolled `max_depth` times, and
further while the value starts within FREE_NESTING - 1 document levels and the expansions fit DEEPER_STATES;
each expansion of a reference inside itself is one shared, minimised sub-automaton (ref).

Nesting (README, the constraint language): a regular language cannot nest without bound, and the exact
automaton of "any value up to d levels" doubles with each level (it remembers which brackets are open: 446
states at d = 3, 7,646 at d = 7). The values of properties an object does not list (additionalProperties
left out of an object that lists properties: nearly every object schema) nest `max_depth` levels. Values the
schema leaves free on purpose (`{}`, `true`, `additionalProperties: true`, an object without properties, an
array without items, a schema without validation keywords) nest at least as deep, and deeper while they fit
a state budget together (FREE_STATES, counting each copy the automaton builder makes), up to FREE_NESTING
levels of the document: `{"type": "object"}` and `{}` nest 8 levels (7,658 character states), 6 free
properties 6 levels each. `{"json": true}` (any JSON object, OpenAI's json_object) has its own smaller budget,
ANY_OBJECT_STATES: 6 levels, 1,898 character states (2,565 token states on the tests' 700-token BPE, 10,341 at
8 levels).

Integers: `1.0` is an integer too, except under drafts 3 and 4 (as `jsonschema` judges them).

Supported: type (and lists of types), properties / required / additionalProperties, enum / const, items /
minItems / maxItems, minLength / maxLength / pattern / format (date, date-time, time, email, uri, uuid),
integer bounds, number bounds that are integers (decimal notation), anyOf / oneOf (as alternation; oneOf
only where its branches cannot overlap), allOf (merged), $ref into the document. Any other validation
keyword is a ConstraintError naming its schema path, e.g. `constraint.properties.tags.uniqueItems: not
supported`: never silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

from pc_core.constraints.char_dfa import build_char_dfa
from pc_core.constraints.json_keywords import (
    ANNOTATIONS,
    finite_values,
    harmless,
    integral_floats,
    merge,
    read_bound,
)
from pc_core.constraints.json_nesting import (
    DEEPER_STATES,
    FREE_NESTING,
    FREE_STATES,
    Free,
    copies_of,
    fill_frees,
    free_depths,
    lookup,
)
from pc_core.constraints.json_values import (
    FORMATS,
    any_value,
    deep_tail,
    integer_range,
    json_string,
    literal_value,
    number_range,
    sep_list,
    string_body,
)
from pc_core.constraints.regex import BOS, EMPTY, EOS, Node, alt, char_set, literal, opt, rep, seq
from pc_core.errors import ConstraintError

KEYWORDS = {  # validation keywords this translator reads; the rest of this set is refused by name
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "anyOf", "oneOf", "allOf", "$ref",
}  # fmt: skip
REFUSED = {
    "not", "patternProperties", "minProperties", "maxProperties", "dependencies", "dependentRequired",
    "dependentSchemas", "propertyNames", "uniqueItems", "contains", "minContains", "maxContains", "prefixItems",
    "additionalItems", "unevaluatedProperties", "unevaluatedItems", "multipleOf", "if", "then", "else",
    "$dynamicRef", "$recursiveRef", "contentSchema",
}  # fmt: skip
MAX_NESTING = 48
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


def schema_ir(
    schema: Any,
    path: str,
    whitespace: str = "compact",
    max_depth: int = 3,
    free_states: int = FREE_STATES,
    deep_tails: bool = False,
) -> Node:
    """The IR of the documents `schema` allows; ConstraintError naming the schema path where it cannot.
    `free_states`: the state budget of the free values (free_depths). `deep_tails`: undeclared properties'
    values go on past max_depth in a skeleton (json_values.deep_tail) that json_syntax.py completes."""
    translator = _Translator(schema, whitespace, max_depth, deeper=True, deep_tails=deep_tails)
    try:
        body = translator.value(schema, path, 0)
    except (_TooDeep, ConstraintError):
        if not translator.extended:  # recursion did not go past max_depth: the same error again
            raise
        translator = _Translator(schema, whitespace, max_depth, deeper=False, deep_tails=deep_tails)
        body = translator.value(schema, path, 0)
    if not translator.frees:
        return body
    copies = copies_of(body)
    frees = translator.frees
    depths = free_depths(
        [(f.at, f.floor, copies.get(id(node), 0)) for f, node in zip(frees, translator.slots)], free_states
    )
    return translator.fill(body, dict(zip(map(id, frees), depths)))


class _TooDeep(Exception):
    """Recursion unrolled past max_depth passed DEEPER_STATES: unroll max_depth times instead."""


class _Translator:
    def __init__(
        self, root: Any, whitespace: str, max_depth: int, deeper: bool = False, deep_tails: bool = False
    ) -> None:
        self.root, self.max_depth, self.deep_tails = root, max_depth, deep_tails
        self.deeper, self.extended, self.shared_states = deeper, False, 0
        self.space = opt(literal(" ")) if whitespace == "flexible" else EMPTY
        self.refs: list[str] = []  # the $ref chain being expanded (cycles: see ref)
        self.shared: dict[tuple, Node] = {}  # a reference expanded inside itself, as one sub-automaton
        self.validator = None
        self.integral_floats = integral_floats(root)
        self.frees: list[Free] = []
        self.slots: list[Node] = []  # the IR node of each free value

    def free(self, at: int, floor: int) -> Node:
        """Any value, nested as deep as schema_ir decides (at least `floor` levels)."""
        self.frees.append(Free(at, floor))
        self.slots.append(("sub", self.frees[-1]))
        return self.slots[-1]

    def fill(self, node: Node, depths: dict[int, int]) -> Node:
        return fill_frees(node, depths, self.space) if self.frees else node

    def fail(self, path: str, what: str = "not supported") -> None:
        raise ConstraintError(path, what)

    def value(self, schema: Any, path: str, depth: int) -> Node:
        if schema is True or schema == {}:  # a free value: nested by the state budget (schema_ir)
            return self.free(depth, self.max_depth)
        if isinstance(schema, dict) and not any(k in KEYWORDS or k in REFUSED for k in schema):
            return self.free(depth, self.max_depth + 1)  # no validation keyword: a container + max_depth
        if schema is False:
            return ("alt", ())  # nothing
        if not isinstance(schema, dict):
            self.fail(path, "expected a schema object")
        finite = finite_values(schema)
        if (
            finite is not None
        ):  # a finite set of values: exactly those the whole schema accepts, whatever it says
            validator = self.validator_for(schema)
            return alt([literal_value(v) for v in finite if validator.is_valid(v)])
        for key in schema:
            if key in REFUSED and not harmless(key, schema[key]):
                self.fail(f"{path}.{key}")
        if "$ref" in schema:
            return self.ref(schema, path, depth)
        if "allOf" in schema:
            return self.value(self.merge_all(schema, path), path, depth)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.alternatives(schema, key, path, depth)
        if "const" in schema or "enum" in schema:
            return self.enum(schema, path)
        types = schema.get("type", list(TYPES))
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or any(t not in TYPES for t in types):
            self.fail(f"{path}.type", "expected a JSON type or a list of them")
        if "integer" in types and "number" in types:
            types = [t for t in types if t != "integer"]  # every integer is a number
        return alt([self.typed(t, schema, path, depth) for t in types])

    def typed(self, kind: str, schema: dict, path: str, depth: int) -> Node:
        if kind == "null":
            return literal("null")
        if kind == "boolean":
            return alt([literal("true"), literal("false")])
        if kind == "string":
            return self.string(schema, path)
        if kind in ("integer", "number"):
            return self.number(kind, schema, path)
        if depth >= MAX_NESTING:
            self.fail(path, f"nested more than {MAX_NESTING} levels deep")
        return self.array(schema, path, depth) if kind == "array" else self.object(schema, path, depth)

    def string(self, schema: dict, path: str) -> Node:
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        for key, bound in (("minLength", lo), ("maxLength", hi)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 0):
                self.fail(f"{path}.{key}", "expected a non-negative integer")
        fmt = schema.get("format")
        if fmt is not None and fmt not in FORMATS:
            self.fail(
                f"{path}.format", f"the format {fmt!r} is not supported (supported: {', '.join(FORMATS)})"
            )
        return json_string(string_body(lo, hi, schema.get("pattern"), fmt, f"{path}.pattern"))

    def number(self, kind: str, schema: dict, path: str) -> Node:
        bounds = {k: schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}
        for key, bound in bounds.items():
            if bound is not None and (isinstance(bound, bool) and key.startswith("exclusive")):
                continue  # draft 4: a flag on minimum / maximum
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                self.fail(f"{path}.{key}", "expected a number")
        lo, lo_x = read_bound(bounds["minimum"], bounds["exclusiveMinimum"], max)
        hi, hi_x = read_bound(bounds["maximum"], bounds["exclusiveMaximum"], min)
        if kind == "integer":  # 100.0 is an integer too from draft 6 on (values count, not spellings)
            zeros = opt(seq([literal("."), rep(literal("0"), 1, None)])) if self.integral_floats else EMPTY
            return seq([integer_range(lo, lo_x, hi, hi_x), zeros])
        found = number_range(lo, lo_x, hi, hi_x)
        if found is None:
            self.fail(
                f"{path}.minimum" if lo is not None else f"{path}.maximum",
                "non-integer number bounds are not supported",
            )
        return found

    def array(self, schema: dict, path: str, depth: int) -> Node:
        items = schema.get("items", True)  # absent: the items are free
        if isinstance(items, list):
            self.fail(f"{path}.items", "a list of item schemas (tuple validation) is not supported")
        item = self.value(items, f"{path}.items", depth + 1)
        lo, hi = schema.get("minItems", 0), schema.get("maxItems")
        comma = seq([literal(","), self.space])
        more = rep(seq([comma, item]), max(lo - 1, 0), None if hi is None else max(hi - 1, 0))
        body = sep_list(item, comma) if lo <= 1 and hi is None else seq([item, more])
        if hi == 0:
            body = ("alt", ())
        return seq([literal("["), opt(body) if lo == 0 else body, literal("]")])

    def object(self, schema: dict, path: str, depth: int) -> Node:
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            self.fail(f"{path}.properties", "expected an object")
        required = schema.get("required", [])
        if not isinstance(required, list):
            self.fail(f"{path}.required", "expected a list of property names")
        extra = schema.get("additionalProperties", True)
        names = list(props) + [r for r in required if r not in props]
        # undeclared properties of an object that lists some: max_depth levels (free values are deeper)
        undeclared = "additionalProperties" not in schema and bool(props)
        tail_value = deep_tail if self.deep_tails else any_value
        fallback = lambda: tail_value(self.max_depth, self.space)  # noqa: E731
        members = []
        for name in names:
            sub = props.get(name, extra)
            if name not in props and undeclared:
                value = fallback()
            else:
                value = self.value(sub, f"{path}.properties.{name}", depth + 1)
            pair = seq([literal(json.dumps(name, ensure_ascii=False) + ":"), self.space, value])
            members.append((pair, name in required))
        tail = None
        if extra is not False:
            value = fallback() if undeclared else self.value(extra, f"{path}.additionalProperties", depth + 1)
            from pc_core.constraints.json_values import key_not_in

            tail = seq([key_not_in(names), literal(":"), self.space, value])
        comma = seq([literal(","), self.space])
        # after[i][s]: members i.. given whether something was written already (s): O(n^2) IR, not 2^n
        after_true = rep(seq([comma, tail]), 0, None) if tail is not None else EMPTY
        after_false = opt(sep_list(tail, comma)) if tail is not None else EMPTY
        for pair, needed in reversed(members):
            with_comma = seq([comma, pair, after_true])
            first = seq([pair, after_true])
            after_true = with_comma if needed else alt([with_comma, after_true])
            after_false = first if needed else alt([first, after_false])
        return seq([literal("{"), after_false, literal("}")])

    def enum(self, schema: dict, path: str) -> Node:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list):
            self.fail(f"{path}.enum", "expected a list")
        rest = {k: v for k, v in schema.items() if k not in ("enum", "const")}
        validator = self.validator_for(rest)
        return alt([literal_value(v) for v in values if validator.is_valid(v)])

    def validator_for(self, schema: dict) -> Any:
        import jsonschema

        if self.validator is None:
            cls = jsonschema.validators.validator_for(self.root, default=jsonschema.Draft202012Validator)
            self.validator = cls(
                self.root if isinstance(self.root, dict) else {}, format_checker=cls.FORMAT_CHECKER
            )
        return self.validator.evolve(schema=schema)

    def alternatives(self, schema: dict, key: str, path: str, depth: int) -> Node:
        branches = schema[key]
        if not isinstance(branches, list) or not branches:
            self.fail(f"{path}.{key}", "expected a non-empty list of schemas")
        rest = {k: v for k, v in schema.items() if k != key}
        out = []
        for i, branch in enumerate(branches):
            merged = merge(rest, branch, f"{path}.{key}[{i}]") if rest else branch
            out.append(self.value(merged, f"{path}.{key}[{i}]", depth))
        if key == "oneOf" and len(out) > 1:
            from pc_core.constraints.json_values import disjoint

            if not disjoint([self.fill(n, {}) for n in out]):  # free values at their floor depth
                self.fail(f"{path}.oneOf", "branches that can overlap are not supported (use anyOf)")
        return alt(out)

    def merge_all(self, schema: dict, path: str) -> dict:
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for i, branch in enumerate(schema["allOf"]):
            branch = self.resolve(branch, f"{path}.allOf[{i}]")
            merged = merge(merged, branch, f"{path}.allOf[{i}]")
        return merged

    def resolve(self, schema: Any, path: str) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and len(schema) == 1:
            schema = self.lookup(schema["$ref"], f"{path}.$ref")
            seen += 1
            if seen > 32:
                self.fail(f"{path}.$ref", "a cycle of references")
        return schema

    def ref(self, schema: dict, path: str, depth: int) -> Node:
        """A reference, expanded. Recursion is unrolled max_depth times, and further (`deeper`) while the value
        starts within FREE_NESTING - 1 document levels (as deep as free values go) and the shared expansions
        stay within DEEPER_STATES (else schema_ir translates again without going further). An expansion
        inside another of the same reference becomes one sub-automaton per (reference chain, document level,
        sibling keywords), minimised and shared by every place that needs it: the unrolling grows with the
        levels, not as (branches ** levels) copies (the IR is a tree to the automaton builder). Free values
        inside such an expansion nest at their floor (max_depth levels)."""
        target = self.lookup(schema["$ref"], f"{path}.$ref")
        ref = schema["$ref"]
        count = self.refs.count(ref)
        if count >= self.max_depth:
            if not self.deeper or depth >= FREE_NESTING - 1:
                return ("alt", ())
            self.extended = True
        rest = {k: v for k, v in schema.items() if k != "$ref" and k not in ANNOTATIONS}
        key = (ref, json.dumps(rest, sort_keys=True), tuple(self.refs), depth) if count else None
        if key in self.shared:
            return self.shared[key]
        merged = merge(rest, target, path) if rest else target
        self.refs.append(ref)
        try:
            node = self.value(merged, path, depth)
        finally:
            self.refs.pop()
        if key is not None:
            whole = seq([char_set([(BOS, BOS)]), self.fill(node, {}), char_set([(EOS, EOS)])])
            dfa = build_char_dfa(whole, path)
            self.shared_states += dfa.num_states
            if self.deeper and self.extended and self.shared_states > DEEPER_STATES:
                raise _TooDeep
            node = self.shared[key] = ("sub", dfa) if dfa.accept.any() else ("alt", ())
        return node

    def lookup(self, ref: Any, path: str) -> Any:
        return lookup(self.root, ref, path)
