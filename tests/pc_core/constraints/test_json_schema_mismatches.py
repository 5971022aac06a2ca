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
