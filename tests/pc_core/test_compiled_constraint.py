"""pc_core/compiled_constraint.py: a request's constraint derived once (span, bans, affixes) and compiled once,
then handed to `prepare`, which decodes under the automaton it is given and never compiles it again."""

import pytest
from tiny_models import build_micro_tokenizer

import pc_core.compiled_constraint as compiled_constraint
from pc_core.compiled_constraint import CompiledConstraint, compile_request
from pc_core.constraints import compile_constraint, parse_constraint
from pc_core.constraints.nodes import Affixed
from pc_core.decoding import prepare
from pc_core.errors import BlocklistInteraction
from pc_core.hmm import HMM
from pc_core.params import DecodeParams, DecodingError

DOG = {"keywords": ["dog"]}


def test_the_derived_constraints(tokenizer):
    params = DecodeParams(max_new_tokens=8, suffix=" the end.", stop=("!",), logit_bias=((5, -100.0),))
    compiled = CompiledConstraint.for_request(DOG, params, len(tokenizer))
    assert compiled.dfa is None
    assert compiled.body == parse_constraint(DOG)
    assert compiled.constraint != compiled.body  # the ban of token 5
    assert isinstance(compiled.judged, Affixed) and compiled.judged.body == compiled.constraint
    assert compiled.judged.suffix == " the" and compiled.judged.stop == ("!",)  # the junction: the first word

    plain = CompiledConstraint.for_request(DOG, DecodeParams(), len(tokenizer))
    assert plain.body is plain.constraint is plain.judged  # no bans, no affixes: one object, nothing wrapped


def test_a_logit_bias_outside_the_vocabulary_names_the_field(tokenizer):
    params = DecodeParams(logit_bias=((len(tokenizer), -100.0),))
    with pytest.raises(DecodingError) as info:
        CompiledConstraint.for_request(DOG, params, len(tokenizer))
    assert info.value.field == "logit_bias"


def test_prepare_decodes_under_the_automaton_it_is_handed(tokenizer, tiny_hmm, monkeypatch):
    params = DecodeParams(max_new_tokens=8, num_beams=2, stop=("!",))
    compiled = compile_request(DOG, params, tokenizer)
    assert compiled.dfa is not None and compile_request(compiled, params, tokenizer) is compiled

    own = prepare(tokenizer, tiny_hmm, DOG, "The", params)  # the library compiles it itself

    def compile_again(*args, **kwargs):
        raise AssertionError("prepare compiled the request's automaton again")

    monkeypatch.setattr(compiled_constraint, "compile_constraint", compile_again)
    search = prepare(tokenizer, tiny_hmm, compiled, "The", params)
    assert search.dfa is compiled.dfa
    assert search.constraint is compiled.constraint and search.judged is compiled.judged
    assert search.dfa.num_states == own.dfa.num_states  # (a lazy automaton: compared once both are explored)


def test_an_automaton_compiled_elsewhere_is_handed_back_when_its_blocklist_interacts(tmp_path):
    """The blocklist mask could dead-end the rest of the constraint: `prepare` compiles the exact product
    itself for a constraint it compiled, and hands the decision back (BlocklistInteraction) to a caller that
    compiled the automaton (a server compiles the exact product in its pool too)."""
    micro = build_micro_tokenizer(tmp_path / "micro")
    hmm = HMM.random(4, len(micro), seed=0, eos_token_id=micro.eos_token_id)
    # "dogs" can only be written through the open word "dog" (" dog" + "s"), which the mask forbids
    spec = {"all": [{"keyword": "dogs", "inflections": False},
                    {"forbidden": ["dog", "cat", "the", "pan"], "inflections": False}]}  # fmt: skip
    params = DecodeParams(max_new_tokens=4, num_beams=2)
    compiled = CompiledConstraint.for_request(spec, params, len(micro))
    masked = compiled.with_dfa(compile_constraint(compiled.judged, micro))
    assert masked.dfa.blocklist is not None
    with pytest.raises(BlocklistInteraction):
        prepare(micro, hmm, masked, [], params)
    exact = compiled.with_dfa(compile_constraint(compiled.judged, micro, blocklist_mask=False))
    assert prepare(micro, hmm, exact, [], params).dfa is exact.dfa
    own = prepare(micro, hmm, spec, [], params)  # compiled here: the fallback is prepare's own
    assert own.dfa.blocklist is None
