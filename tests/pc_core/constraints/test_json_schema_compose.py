"""`{"json_schema": S}` composed with the rest of the language (not, word_count, keywords, suffix, stop): the
token automaton against the independent checker (json + jsonschema + the other nodes' own checks), on token
sequences that split the documents at every place the tokenizer allows."""

import random

import pytest
from byte_support import has_banned_token

from pc_core import check_ids, compile_constraint
from pc_core.constraints import with_affixes

NOTE = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 16}}, "required": ["text"],
        "additionalProperties": False}  # fmt: skip
DOCS = ['{"text":"a refund"}', '{"text":"refund"}', '{"text":"one two three"}', '{"text":"x"}', '{"text":""}',
        '{"text":"a b"}.', '{"text":"a b"}\n', '{"text":"a b"}END', '{"text":"a b"}.END', '{"text":"a"} ',
        '{"text":"no refund here"}', '{"text":"toolongtoolongtoolong"}', '{"text":"a"}x', "{}", ""]  # fmt: skip
SPECS = [
    {"all": [{"json_schema": NOTE}, {"not": {"keyword": "refund"}}]},
    {"all": [{"json_schema": NOTE}, {"word_count": {"min": 2, "max": 3}}]},
    {"all": [{"json_schema": NOTE}, {"keywords": ["refund"]}]},
    {"any": [{"json_schema": NOTE}, {"choice": ["{}"]}]},
    {"not": {"json_schema": NOTE}},
]


def _sequences(tokenizer, seed):
    rng = random.Random(seed)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    out = []
    for doc in DOCS:
        out.append(encode(doc))
        out.append([t for ch in doc for t in encode(ch)])
        i = rng.randint(0, len(doc))
        out.append(encode(doc[:i]) + encode(doc[i:]))
    return out


@pytest.mark.parametrize("index", range(len(SPECS)))
def test_json_schema_composes_with_other_nodes(tokenizer, index):
    spec = SPECS[index]
    dfa = compile_constraint(spec, tokenizer)
    accepted = 0
    for ids in _sequences(tokenizer, index):
        expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected, (spec, tokenizer.decode(ids))
        accepted += expected
    assert accepted > 0


@pytest.mark.parametrize("suffix, stop", [(".", ()), (None, ("END",)), (".", ("END", "\n"))])
def test_json_schema_with_suffix_and_stop(tokenizer, suffix, stop):
    spec = with_affixes({"json_schema": NOTE}, suffix=suffix, stop=stop)
    dfa = compile_constraint(spec, tokenizer)
    accepted = 0
    for ids in _sequences(tokenizer, 11):
        expected = check_ids(spec, tokenizer, ids) and not has_banned_token(tokenizer, ids)
        assert dfa.accepts(ids) == expected, (suffix, stop, tokenizer.decode(ids))
        accepted += expected
    assert accepted > 0
