"""benchmarks/jsonschema.py's correctness check: each MaskBench instance judged in its own key order and in
the schema's (MaskBench's creation script put keys in the schema's order only for the schemas LLGuidance
compiles, so the instances of oneOf schemas keep the order an LLM wrote)."""

import json

from benchmarks.jsonschema import check_instances
from pc_core.constraints.patterns import JsonSchema, char_automaton

REQUEST = {"type": "object", "required": ["method"], "additionalProperties": False,
           "properties": {"method": {"type": "string"}, "id": {"type": "integer"}, "params": {"type": "array"}}}  # fmt: skip
SCHEMA = {"oneOf": [{"$ref": "#/$defs/request"}, {"type": "array", "items": {"$ref": "#/$defs/request"}}],
          "$defs": {"request": REQUEST}}  # fmt: skip
ROW = {
    "id": "shape of Github_easy---o25419",
    "schema": SCHEMA,
    "tests": [
        {
            "valid": True,
            "data": {"method": "m", "params": [42, 23], "id": 1},
        },  # keys out of the schema's order
        {"valid": True, "data": [{"method": "m", "id": 1}]},
        {"valid": False, "data": {"method": "m", "params": True, "id": 1}},
        {"valid": False, "data": {"params": [1], "id": 1}},
    ],
}


def test_valid_instances_in_another_key_order_are_judged_in_the_schemas():
    dfa = char_automaton(JsonSchema(json.dumps(SCHEMA)))
    assert not dfa.accepts('{"method":"m","params":[42,23],"id":1}')  # the documented layout: schema order
    assert check_instances(dfa, ROW) == ([], 1)


def test_an_automaton_accepting_too_much_is_caught_in_either_order():
    loose = char_automaton(JsonSchema(json.dumps({"type": ["object", "array"]})))
    bad, reordered = check_instances(loose, ROW)
    assert [m["valid"] for m in bad] == [False, False] and reordered == 0
    strict = char_automaton(JsonSchema(json.dumps({"type": "array", "items": REQUEST})))
    bad, reordered = check_instances(strict, ROW)
    assert [m["valid"] for m in bad] == [True] and reordered == 0
