"""`json_schema` / `json`: the schema's automaton against the `jsonschema` library, the token automaton against
the independent checker, and the pieces (integer and number bounds, formats) exhaustively."""

import datetime
import json
import random

import pytest
from byte_support import has_banned_token

from pc_core import check_ids, compile_constraint, parse_constraint
from pc_core.constraints.char_dfa import build_char_dfa
from pc_core.constraints.json_values import integer_range, number_range
from pc_core.constraints.patterns import JsonSchema, char_automaton, full, json_holds
from pc_core.constraints.regex import parse_regex
from pc_core.errors import ConstraintError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 3, None]}, "maxItems": 3},
        "kind": {"const": "person"},
    },
    "required": ["name", "kind"],
    "additionalProperties": False,
}
SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": "number", "minimum": -2, "exclusiveMaximum": 3}, "minItems": 1},
    {"anyOf": [{"type": "string", "pattern": "^[A-Z]{2}\\d$"}, {"type": "integer", "exclusiveMinimum": 5}]},
    {"type": "object", "properties": {"id": {"type": "string", "format": "uuid"}, "d": {"type": "string", "format": "date"}}},
    {"$defs": {"p": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
     "type": "array", "items": {"$ref": "#/$defs/p"}, "maxItems": 2},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "boolean"}}}, {"required": ["a"]}],
     "properties": {"a": {}}, "additionalProperties": {"type": "null"}},
    {"type": ["string", "null"], "maxLength": 2},
    {"oneOf": [{"type": "boolean"}, {"type": "null"}]},
]  # fmt: skip


def _value(rng, depth=0):
    """Random JSON values that often come close to the schemas above."""
    choices = [
        lambda: rng.choice(["", "a", "Bob", "AB1", "x@y.io", "person", "2024-02-29", "2023-02-29",
                            "123e4567-e89b-12d3-a456-426614174000", 'q"\\', "é€"]),
        lambda: rng.choice([0, 1, 5, 6, -1, -2, 3, 130, 131, -3, 2.5, -2.0, 2.999, 3.0, 1e2]),
        lambda: rng.choice([True, False, None]),
    ]  # fmt: skip
    if depth < 2:
        choices.append(lambda: [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))])
        keys = ["name", "age", "email", "tags", "kind", "id", "d", "x", "a", "b"]
        choices.append(lambda: {k: _value(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 4))})
        person = lambda: rng.choice(  # noqa: E731
            [
                {"name": rng.choice(["Al", "", "é€", "toolongname"]), "kind": "person"},
                {"a": rng.choice([True, 1]), "b": rng.choice([None, 1])},
            ]
        )
        choices.append(
            lambda: {**person(), **{k: _value(rng, depth + 1) for k in rng.sample(keys, rng.randint(0, 2))}}
        )
    return rng.choice(choices)()


def _ordered(value, schema):
    """The value with object keys in the schema's property order (the layout the automaton writes)."""
    if isinstance(value, dict):
        order = list(schema.get("properties", {})) if isinstance(schema, dict) else []
        keys = [k for k in order if k in value] + [k for k in value if k not in order]
        return {k: _ordered(value[k], schema.get("properties", {}).get(k, {}) if isinstance(schema, dict) else {})
                for k in keys}  # fmt: skip
    if isinstance(value, list):
        items = schema.get("items", {}) if isinstance(schema, dict) else {}
        return [_ordered(v, items) for v in value]
    return value


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_schema_automaton_agrees_with_jsonschema(index):
    schema = SCHEMAS[index]
    dfa = char_automaton(JsonSchema(json.dumps(schema)))
    rng = random.Random(index)
    accepted = 0
    for _ in range(3000):
        value = _value(rng)
        if isinstance(schema.get("items"), dict) and "$ref" in schema["items"] and isinstance(value, list):
            value = [_ordered(v, schema["$defs"]["p"]) for v in value]
        text = json.dumps(_ordered(value, schema), separators=(",", ":"), ensure_ascii=False)
        expected = json_holds(schema, text)
        assert dfa.accepts(text) == expected, (schema, text)
        accepted += expected
    assert accepted > 0


def test_layout_is_compact_and_ordered():
    dfa = char_automaton(JsonSchema(json.dumps(PERSON)))
    assert dfa.accepts('{"name":"Al","kind":"person"}')
    assert not dfa.accepts('{"name": "Al","kind":"person"}')
    assert not dfa.accepts('{"kind":"person","name":"Al"}')
    flexible = char_automaton(JsonSchema(json.dumps(PERSON), whitespace="flexible"))
    assert flexible.accepts('{"name": "Al", "kind": "person"}')


def test_integer_and_number_bounds_exhaustive():
    bounds = [
        (None, False),
        (-17, False),
        (-17, True),
        (0, False),
        (0, True),
        (9, False),
        (10, True),
        (123, False),
    ]
    for lo, lo_x in bounds:
        for hi, hi_x in bounds:
            whole = build_char_dfa(full(integer_range(lo, lo_x, hi, hi_x)), "t")
            number = build_char_dfa(full(number_range(lo, lo_x, hi, hi_x)), "t")
            for n in range(-150, 150):
                ok = (lo is None or (n > lo if lo_x else n >= lo)) and (
                    hi is None or (n < hi if hi_x else n <= hi)
                )
                assert whole.accepts(str(n)) == ok, (lo, lo_x, hi, hi_x, n)
                for text in (str(n), f"{n}.5", f"{n}.0", f"{n}.05"):
                    x = float(text)
                    ok = (lo is None or (x > lo if lo_x else x >= lo)) and (
                        hi is None or (x < hi if hi_x else x <= hi)
                    )
                    assert number.accepts(text) == ok or text.startswith("-0"), (lo, lo_x, hi, hi_x, text)


def test_date_format_is_exact():
    from pc_core.constraints.json_values import FORMATS

    dfa = build_char_dfa(parse_regex(FORMATS["date"], "f"), "f")
    day = datetime.date(1999, 12, 1)
    while day.year < 2002:
        assert dfa.accepts(day.isoformat())
        day += datetime.timedelta(days=1)
    for bad in (
        "1900-02-29",
        "2100-02-29",
        "2023-02-29",
        "2023-04-31",
        "0000-01-01",
        "2023-13-01",
        "2023-1-01",
    ):
        assert not dfa.accepts(bad), bad
    for good in ("2000-02-29", "2024-02-29", "0004-02-29"):
        assert dfa.accepts(good), good


@pytest.mark.parametrize(
    "schema, path",
    [
        ({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
         "constraint.json_schema.properties.tags.uniqueItems"),
        ({"type": "string", "format": "hostname"}, "constraint.json_schema.format"),
        ({"type": "number", "multipleOf": 3}, "constraint.json_schema.multipleOf"),
        ({"$ref": "http://example.com/s.json"}, "constraint.json_schema.$ref"),
        ({"type": "string", "pattern": "(a)\\1"}, "constraint.json_schema.pattern"),
        ({"type": "number", "minimum": 0.5}, "constraint.json_schema.minimum"),
        ({"oneOf": [{"type": "object", "properties": {"r": {}}, "required": ["r"]},
                    {"type": "object", "properties": {"l": {}}, "required": ["l"]}]},
         "constraint.json_schema.oneOf"),  # {"r":1,"l":2} is valid under both: oneOf rejects it
    ],
)  # fmt: skip
def test_unsupported_is_named_by_schema_path(schema, path):
    with pytest.raises(ConstraintError) as err:
        parse_constraint({"json_schema": schema})
    assert err.value.path == path


def test_recursion_unrolls_to_max_depth():
    tree = {"$defs": {"n": {"type": "object", "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/n"}}}}},
            "$ref": "#/$defs/n"}  # fmt: skip
    node = parse_constraint({"json_schema": tree, "max_depth": 4})
    dfa = char_automaton(node)
    assert dfa.accepts('{"c":[{"c":[]},{}]}')
    assert dfa.accepts('{"c":[{"c":[{"c":[{"c":[]}]}]}]}')  # four expansions of the reference
    assert not dfa.accepts('{"c":[{"c":[{"c":[{"c":[{"c":[]}]}]}]}]}')  # a fifth is cut
    assert parse_constraint({"json": True}).to_json()["json"] is True  # its own budget (mismatch tests)
    one, two = (
        {"type": "object", "properties": dict(p)} for p in ([("a", {}), ("b", {})], [("b", {}), ("a", {})])
    )
    assert parse_constraint({"json_schema": one}) != parse_constraint({"json_schema": two})  # order is layout


NOTE = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"],
        "additionalProperties": False}  # fmt: skip
DOCS = ['{"name":"refund"}', '{"name":"a refund me"}', '{"name":"refunds"}', '{"name":"Al","kind":"person"}', '{"name":"Al","age":30,"kind":"person"}', '{"name":"","kind":"person"}',
        '{"name":"Bo","tags":["a",3,null],"kind":"person"}', '{"kind":"person"}', '{"name":"Al","kind":"robot"}',
        '{"name":"refund me","kind":"person"}', '{"name":"Al","kind":"person"}x', "[]", ""]  # fmt: skip


@pytest.mark.parametrize(
    "spec",
    [
        {"json_schema": PERSON},
        {"all": [{"json_schema": NOTE}, {"keyword": "refund"}]},
        {"any": [{"json_schema": PERSON}, {"json": True}]},
    ],
)
def test_token_automaton_agrees_with_checker(tokenizer, spec):
    dfa = compile_constraint(spec, tokenizer)
    rng = random.Random(0)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    for doc in DOCS:
        for ids in (encode(doc), [t for ch in doc for t in encode(ch)]):
            expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
            assert dfa.accepts(ids) == expected, (spec, doc)
        i = rng.randint(0, len(doc))
        ids = encode(doc[:i]) + encode(doc[i:])
        assert dfa.accepts(ids) == (check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids))


def test_cached_character_automata_cost_the_garbage_collector_nothing_per_state():
    """The compile caches keep up to 256 character automata per process (patterns.char_automaton, json_values):
    their transition rows are tuples of ints, which the collector stops tracking at its first pass, so a full
    collection (which holds the GIL over every decoding thread) does not traverse every row of every cached
    automaton; lists would stay tracked (measured: 62k lists after 30 MaskBench schemas, a full collection
    34 ms -> 1.5 ms)."""
    import gc

    from pc_core.constraints.patterns import JsonSchema, char_automaton

    schema = {"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 5} for i in range(8)},
              "required": ["k0", "k3"]}  # fmt: skip
    dfa = char_automaton(JsonSchema(json.dumps(schema)))
    assert dfa.num_states > 50
    gc.collect()
    assert not any(gc.is_tracked(row) for row in dfa.rows)
    gc.collect()  # the tuple of rows: once its rows are untracked
    assert not gc.is_tracked(dfa.rows) and not gc.is_tracked(dfa.starts_list)
    assert [list(row) for row in dfa.rows] == dfa.trans.tolist()  # the same transitions as the array
