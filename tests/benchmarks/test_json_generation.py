"""The JSON Schema benchmarks (benchmarks/json_generation.py, benchmarks/json_step.py) on the tiny test models:
the mask-only decoder stays inside the automaton's live states, every guided output is a complete document
the `jsonschema` library accepts, and the step walk follows a valid instance and refuses an invalid one."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from benchmarks.json_generation import judge, live_states, mask_only, run_schema
from benchmarks.json_step import compact, compiled_request, sample_across_groups, walk
from pc_core.constraints import compile_constraint, decode_continuation
from pc_core.decoding import prepare
from pc_core.params import DecodeParams

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                      "b": {"type": "string", "maxLength": 4}}, "required": ["a", "b"]},
    {"type": "array", "items": {"enum": ["dog", "cat"]}, "minItems": 1, "maxItems": 3},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"anyOf": [{"type": "null"},
                                      {"type": "integer", "maximum": 5}]}}, "required": ["ok"]},
]  # fmt: skip


def test_judge_names_each_outcome():
    schema = SCHEMAS[0]
    assert judge(schema, '{"a":3,"b":"x"}', ended=True) == "valid"
    assert judge(schema, '{"a":3,"b":"x"}', ended=False) == "valid"  # complete exactly at max_new_tokens
    assert judge(schema, '{"a":3,"b":"x', ended=False) == "unfinished"
    assert judge(schema, '{"a":3,"b":', ended=True) == "not JSON"
    assert judge(schema, '{"a":12,"b":"x"}', ended=True) == "invalid"
    assert judge({"type": "string", "format": "date"}, '"2024-13-40"', ended=True) == "invalid"


def test_sample_across_groups_is_seeded_and_takes_each_group_in_turn():
    rows = [{"id": f"{g}{i}", "group": g} for g in "abc" for i in range(4 if g != "c" else 1)]
    order = sample_across_groups(rows, seed=1)
    assert sorted(r["id"] for r in order) == sorted(r["id"] for r in rows)
    assert {r["group"] for r in order[:3]} == {"a", "b", "c"}
    assert order == sample_across_groups(rows, seed=1)
    assert [r["id"] for r in order] != [r["id"] for r in sample_across_groups(rows, seed=2)]


@pytest.mark.parametrize("sample", [False, True])
def test_mask_only_decoder_stays_in_live_states(tiny_lm, tokenizer, sample):
    for schema in SCHEMAS:
        dfa = compile_constraint({"json_schema": schema}, tokenizer)
        ids, ended = mask_only(tiny_lm, tokenizer, dfa, max_new_tokens=12, sample=sample, seed=3)
        assert len(ids) <= 12 and tokenizer.eos_token_id not in ids
        live, state = live_states(dfa), dfa.initial_state
        for token in ids:  # every prefix can still be finished (by some number of tokens)
            state = dfa.step(state, token)
            assert bool(live[state])
        text = decode_continuation(tokenizer, ids)
        if ended:  # EOS is allowed only where the document is complete
            assert dfa.accepts(ids) and judge(schema, text, True) == "valid", text
        else:
            assert len(ids) == 12 and judge(schema, text, False) == (
                "valid" if dfa.accepts(ids) else "unfinished"
            )


def test_every_guided_output_validates(tiny_lm, tokenizer, tiny_hmm):
    args = Namespace(max_new_tokens=16, seed=0, timeout=20.0)
    for i, schema in enumerate(SCHEMAS):
        row = {"id": f"s{i}", "group": "g", "schema": schema}
        for mode in ("greedy", "sample"):
            result = run_schema(tiny_lm, tokenizer, tiny_hmm, row, mode, args)
            assert result["guided"] == "valid", result
            assert result["guided_tokens"] <= 16 and result["masked_tokens"] <= 16
            assert json.loads(result["guided_text"]) is not None


def test_step_walk_follows_a_valid_instance_and_refuses_an_invalid_one(tokenizer, tiny_hmm):
    schema = SCHEMAS[0]
    params = DecodeParams(max_new_tokens=24)
    search = prepare(tokenizer, tiny_hmm, compiled_request(tokenizer, schema, params), "", params)
    good = tokenizer.encode(compact({"a": 7, "b": "ok"}), add_special_tokens=False) + [tokenizer.eos_token_id]
    clocks = walk(search, good)
    for name in ("step", "mask", "floor"):  # one wall and one CPU time per token
        assert len(clocks[name].wall) == len(clocks[name].cpu) == len(good)
        assert all(t >= 0 for t in clocks[name].wall + clocks[name].cpu)
    # per token whether it took the walk's first vocabulary-wide product: one does (inside the string "ok")
    assert len(clocks["first"]) == len(good) and sum(clocks["first"]) == 1
    bad = tokenizer.encode(compact({"a": 70, "b": "ok"}), add_special_tokens=False) + [tokenizer.eos_token_id]
    with pytest.raises(AssertionError, match="forbids token"):
        walk(search, bad)
