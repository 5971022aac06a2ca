"""Each class of mismatch the MaskBench run (benchmarks/jsonschema.py) found between the schema's character
automaton and the `jsonschema` library, reproduced on a small schema: every valid instance, written compactly
(`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`), is accepted and every invalid one rejected;
or, where the automaton cannot follow the keyword, the schema is a ConstraintError naming its path."""

import json

from pc_core.constraints.patterns import JsonDocuments, JsonSchema, char_automaton, json_holds


def _agree(schema, values, **options):
    """The automaton accepts exactly the values `jsonschema` accepts (compact text, keys as given)."""
    dfa = char_automaton(JsonSchema(json.dumps(schema), **options))
    for value in values:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        assert dfa.accepts(text) == json_holds(schema, text), (schema, text)


def test_additional_keys_with_escapes():
    """An additional property's name is any string: escaped characters included (`"a\\\\"`, `"q\\""`), and a
    listed name written with an escape is still that name (not an additional property)."""
    schema = {
        "type": "object",
        "properties": {'a"b': {"type": "integer"}},
        "additionalProperties": {"type": "string"},
    }
    _agree(schema, [{"a\\": "x"}, {'q"': "x"}, {"tab\there": "x"}, {'a"b': 1}, {'a"b': "x"}, {"ü€": "x"},
                    {"a\\": 1}, {"\n": "x"}])  # fmt: skip


def test_integer_spelling_follows_the_draft():
    """Draft 4 counts 1.0 as a number, not an integer (jsonschema's Draft4Validator); draft 6 and later count
    values, so 1.0 is an integer there."""
    for draft in ("http://json-schema.org/draft-04/schema#", "http://json-schema.org/draft-06/schema#", None):
        schema = {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0}}}
        if draft:
            schema["$schema"] = draft
        _agree(schema, [{"id": 1}, {"id": 1.0}, {"id": 1.5}, {"id": 12345.0}, {"id": -1.0}, {"id": 0.0}])


def test_string_content_with_escapes():
    """A pattern / format / length inside a string is a DFA over the decoded value, embedded so that `"`, `\\`
    and control characters are written as `json.dumps` writes them (through a trie after the backslash)."""
    values = ["a", "a\n", 'a"', "a\\", "a\x01", "a\x1f\x7f", 'a"\\\n', "a\u2028", "b\n", "a\t\t\t\t", "aé€"]
    for schema in (
        {"type": "string", "pattern": "^a.{0,3}$"},
        {"type": "string", "pattern": "^a[^\\n]*$"},
        {"type": "string", "maxLength": 3},
        {"type": "array", "items": {"type": "string", "pattern": '[\\\\"]|^a$'}},
    ):
        _agree(schema, [[v] for v in values] if schema["type"] == "array" else values)


def _nested(levels):
    """A value nesting `levels` containers, objects and arrays in turn: {"k":[{"k":[...]}]}."""
    value = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def test_free_values_nest_by_the_state_budget():
    """MaskBench's valid instances that nest 5 to 8 levels inside values the schema leaves free (an object
    without properties, `additionalProperties: true`, a property whose schema has no validation keyword): a
    free value nests as deep as the state budget allows (8 document levels where it is the only one), no
    longer a flat 3 levels inside it (Github_trivial---o45021, o45028, o79450)."""
    deep = {"k": _nested(5)}  # 6 levels
    for schema in (
        {"type": "object"},
        {"type": "object", "properties": {}, "additionalProperties": True, "links": [{"rel": "self"}]},
        {"type": "object", "additionalProperties": {"description": "anything"}},
    ):
        _agree(schema, [deep, {"k": _nested(3)}, {"k": [1, {"a": None}]}, {}, [deep]])
        dfa = char_automaton(JsonSchema(json.dumps(schema)))
        assert dfa.accepts(json.dumps(deep, separators=(",", ":")))
        assert dfa.accepts(json.dumps({"k": _nested(7)}, separators=(",", ":")))
        assert not dfa.accepts(json.dumps({"k": _nested(8)}, separators=(",", ":")))  # the bound: 9 levels
    names = [f"p{i}" for i in range(6)]
    many = {"type": "object", "properties": dict.fromkeys(names, {}), "required": names}
    dfa = char_automaton(JsonSchema(json.dumps(many)))  # 6 free values share the budget: 5 levels each
    for inner, accepted in ((5, True), (6, False)):
        doc = {name: _nested(inner) if name == "p4" else 0 for name in names}
        assert dfa.accepts(json.dumps(doc, separators=(",", ":"))) == accepted


def test_free_depths():
    from pc_core.constraints.json_schema import free_depths

    assert free_depths([]) == []
    assert free_depths([(1, 3)], 4_000) == [6]  # one free value one level down: 7 document levels
    assert free_depths([(0, 3)], 4_000) == [6]
    assert free_depths([(1, 3), (1, 3)], 4_000) == [5, 5]
    assert free_depths([(1, 3, 2), (1, 3, 2)], 4_000) == [4, 4]  # each copied twice by the automaton builder
    assert free_depths([(6, 3), (1, 3)], 4_000) == [3, 5]  # deep places keep their floor (8 levels at most)
    assert free_depths([(6, 3, 0)], 4_000) == [3]
    assert free_depths([(1, 3)] * 40, 4_000) == [3] * 40
    assert free_depths([(2, 4)] * 40, 4_000) == [4] * 40  # never under a floor
    # a schema's budget (FREE_STATES): 8 document levels for two values one level down (o47153)
    assert free_depths([(1, 4, 1), (1, 3, 1)]) == [7, 7]
    assert free_depths([(0, 3)]) == [7]  # at most FREE_NESTING - 1 inside
    assert free_depths([(1, 3, 2), (1, 3, 2)]) == [6, 6]


def test_undeclared_properties_nest_max_depth():
    """The exact part (README): an object that lists properties takes other properties, absent
    `additionalProperties`, with values nested `max_depth` levels (default 3) in the automaton, which is the
    whole bound inside other constraints; a json_schema alone goes on to 8 levels with the JSON syntax beside
    the automaton (test_json_deep_values.py). Free values are budgeted; these are not, since nearly every
    object schema has them and each level doubles their automaton."""
    schema = {"type": "object", "properties": {"a": {"type": "number"}}}
    dfa = char_automaton(JsonSchema(json.dumps(schema)))
    assert dfa.accepts('{"a":1,"x":[{"k":[1]}]}')
    assert not dfa.accepts('{"a":1,"x":[{"k":[{"k":1}]}]}')
    assert char_automaton(JsonSchema(json.dumps(schema), max_depth=4)).accepts(
        '{"a":1,"x":[{"k":[{"k":1}]}]}'
    )
    alone = JsonDocuments(JsonSchema(json.dumps(schema)))  # what compile_constraint gives it alone
    assert alone.accepts('{"a":1,"x":[{"k":[{"k":[{"k":[{"k":1}]}]}]}]}')  # 8 levels
    assert not alone.accepts('{"a":1,"x":[{"k":[{"k":[{"k":[{"k":[1]}]}]}]}]}')  # 9


def test_one_of_with_free_branches_still_judged_disjoint():
    schema = {"oneOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}
    _agree(schema, ["a", {"k": _nested(4)}, [_nested(4)], 1, None])  # 5 levels: two free values


def _compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_free_values_of_a_schema_reach_eight_levels():
    """MaskBench's valid instances that nest 8 levels inside a schema's free values (Github_trivial---o45024,
    o45026, o45027, o45029: an object with `additionalProperties: true` and nothing else to validate; o47153: a
    property whose schema has no validation keyword beside that root tail; o17543, o47152: several free values
    two levels down): a schema's free values share a budget large enough for 8 document levels, which is the
    bound (a 9th level is outside the language)."""
    root_tail = {"type": "object", "additionalProperties": True, "links": [{"rel": "self"}]}
    _agree(root_tail, [_nested(8), {"k": _nested(7)}, {"a": 1, "k": [_nested(6)]}, []])
    dfa = char_automaton(JsonSchema(json.dumps(root_tail)))
    assert dfa.accepts(_compact({"k": _nested(7)}))
    assert not dfa.accepts(_compact({"k": _nested(8)}))
    beside = {"properties": {"test": {"links": [{"rel": "self"}]}}}  # and the items of an array: free
    _agree(beside, [{"test": _nested(7)}, [_nested(7)], {"test": 1, "k": 1}, {"test": "x"}])
    dfa = char_automaton(JsonSchema(json.dumps(beside)))
    assert dfa.accepts(_compact({"test": _nested(7)})) and dfa.accepts(_compact([_nested(7)]))
    two_down = {"type": "object", "required": ["a"], "properties": {"a": {
        "type": "object", "required": ["s", "t", "u"], "properties": {
            "s": {"type": "object"}, "t": {"type": "array"}, "u": {}}}}}  # fmt: skip
    doc = {"a": {"s": {"k": _nested(5)}, "t": [_nested(5)], "u": _nested(6)}}  # 8 levels each
    _agree(two_down, [doc])
    assert char_automaton(JsonSchema(json.dumps(two_down))).accepts(_compact(doc))


def test_json_true_keeps_its_small_automaton():
    """`{"json": true}` (any JSON object; OpenAI's json_object) is not a schema's free value: it nests by its
    own fixed budget, 6 levels, so that its automaton stays small (1,898 character states, not the 7,658 of
    `{"json_schema": {"type": "object"}}` at 8 levels), and it survives a round trip through to_json."""
    from pc_core.constraints.spec import parse_constraint

    node = parse_constraint({"json": True})
    assert parse_constraint(node.to_json()) == node
    dfa = char_automaton(node)
    assert dfa.num_states < 2_000
    assert dfa.accepts(_compact({"k": _nested(5)}))
    assert not dfa.accepts(_compact({"k": _nested(6)}))
    schema = char_automaton(parse_constraint({"json_schema": {"type": "object"}}))
    assert schema.accepts(_compact({"k": _nested(7)}))


EXPR = {
    "definitions": {
        "expr": {
            "anyOf": [
                {"type": "boolean"},
                {"type": "number"},
                *(
                    {"type": "object", "required": [k], "additionalProperties": False,
                     "properties": {k: {"$ref": "#/definitions/expr"}}}
                    for k in ("log", "exp", "geomsum", "not")
                ),
                *(
                    {"type": "object", "required": [k], "additionalProperties": False,
                     "properties": {k: {"type": "array", "minItems": 2, "maxItems": 2,
                                        "items": {"$ref": "#/definitions/expr"}}}}
                    for k in ("pow", "+")
                ),
            ]
        }
    },
    "$ref": "#/definitions/expr",
}  # fmt: skip


def test_recursion_unrolls_to_the_document_bound():
    """A recursive `$ref` (Github_trivial---o47165, an expression grammar) is unrolled `max_depth` times and
    further while the document is under 8 levels: `{"pow":[{"exp":2},{"log":{"geomsum":{"not":true}}}]}`
    expands it five times. Each expansion of a reference inside itself is one shared sub-automaton per
    (reference chain, level), so the unrolling grows linearly, not as branches^depth."""
    valid = {"pow": [{"exp": 2}, {"log": {"geomsum": {"not": True}}}]}
    _agree(EXPR, [valid, {"pow": [{"exp": 2}]}, {"pow": [{"exp": {"log": 1}}, 2]}, {"pow": [1, 2, 3]},
                  {"log": {"exp": {"not": {"+": [1, {"log": False}]}}}}, {"exp": {"expr": "x"}}])  # fmt: skip
    assert char_automaton(JsonSchema(json.dumps(EXPR))).accepts(_compact(valid))


def test_recursion_past_max_depth_only_while_small():
    """Unrolling past `max_depth` stops where the shared expansions pass DEEPER_STATES: this element schema
    (Github_easy---o83258: an element's children are a string, an element or a list of elements, beside a free
    `props` object) unrolled to 8 levels takes 19,887 states here (the full o83258 passes the 60,000-state
    cap); it is unrolled max_depth times instead, as before (6,869 states)."""
    react = {"type": "object", "additionalProperties": False, "required": ["type"], "properties": {
        "children": {"oneOf": [{"type": "string"}, {"$ref": "#/definitions/e"},
                               {"type": "array", "items": {"$ref": "#/definitions/e"}}]},
        "props": {"type": "object", "additionalProperties": True}, "type": {"type": "string"}}}  # fmt: skip
    schema = {"$ref": "#/definitions/e", "definitions": {"e": react}}
    three = {"children": [{"children": {"props": {"k": [1]}, "type": "a"}, "type": "b"}], "type": "c"}
    _agree(schema, [three, {"children": "x", "type": "a"}, {"type": 1}, {"children": [{"type": "a"}, 2]}])
    dfa = char_automaton(JsonSchema(json.dumps(schema)))
    assert dfa.accepts(_compact(three))
    assert not dfa.accepts(_compact({"children": {"children": three, "type": "b"}, "type": "c"}))  # a 4th
