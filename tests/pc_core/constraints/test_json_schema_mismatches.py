"""Each class of mismatch the MaskBench run (benchmarks/jsonschema.py) found between the schema's character
automaton and the `jsonschema` library, reproduced on a small schema: every valid instance, written compactly
(`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`), is accepted and every invalid one rejected;
or, where the automaton cannot follow the keyword, the schema is a ConstraintError naming its path."""

import json

from pc_core.constraints.patterns import JsonSchema, char_automaton, json_holds


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
    free value nests as deep as the state budget allows (6 document levels where it is the only one), no
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
        assert not dfa.accepts(json.dumps({"k": _nested(6)}, separators=(",", ":")))  # the bound: 7 levels
    names = [f"p{i}" for i in range(6)]
    many = {"type": "object", "properties": dict.fromkeys(names, {}), "required": names}
    dfa = char_automaton(JsonSchema(json.dumps(many)))  # 6 free values share the budget: 3 levels each
    for inner, accepted in ((3, True), (4, False)):
        doc = {name: _nested(inner) if name == "p4" else 0 for name in names}
        assert dfa.accepts(json.dumps(doc, separators=(",", ":"))) == accepted


def test_free_depths():
    from pc_core.constraints.json_schema import free_depths

    assert free_depths([]) == []
    assert free_depths([(1, 3)]) == [6]  # one free value one level down: 7 document levels
    assert free_depths([(0, 3)]) == [6]
    assert free_depths([(1, 3), (1, 3)]) == [5, 5]
    assert free_depths([(1, 3, 2), (1, 3, 2)]) == [4, 4]  # each copied twice by the automaton builder
    assert free_depths([(6, 3), (1, 3)]) == [3, 5]  # deep places keep their floor (8 levels at most)
    assert free_depths([(6, 3, 0)]) == [3]
    assert free_depths([(1, 3)] * 40) == [3] * 40
    assert free_depths([(2, 4)] * 40) == [4] * 40  # never under a floor


def test_undeclared_properties_nest_max_depth():
    """The documented bound that stays (README): an object that lists properties takes other properties,
    absent `additionalProperties`, with values nested `max_depth` levels (default 3); deeper ones need the
    setting. Free values are budgeted; these are not, since nearly every object schema has them and each
    level doubles their automaton."""
    schema = {"type": "object", "properties": {"a": {"type": "number"}}}
    dfa = char_automaton(JsonSchema(json.dumps(schema)))
    assert dfa.accepts('{"a":1,"x":[{"k":[1]}]}')
    assert not dfa.accepts('{"a":1,"x":[{"k":[{"k":1}]}]}')
    assert char_automaton(JsonSchema(json.dumps(schema), max_depth=4)).accepts(
        '{"a":1,"x":[{"k":[{"k":1}]}]}'
    )


def test_one_of_with_free_branches_still_judged_disjoint():
    schema = {"oneOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}]}
    _agree(schema, ["a", {"k": _nested(4)}, [_nested(4)], 1, None])  # 5 levels: two free values
