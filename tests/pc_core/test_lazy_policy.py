"""Which automaton and guide a request gets, by expected cost (issue 26 §4): the exact guide's CPU budget is a
set-up time, the explicit attempt is skipped where a lower bound on the minimal automaton already exceeds its
cap (the bound never exceeds the explicit automaton's states), and beams in one state share one answer of the
lazy search."""

import numpy as np
import pytest

from pc_core import compile_constraint
from pc_core.constraints.compiler import LAZY_AFTER_STATES
from pc_core.constraints.spec import parse_constraint
from pc_core.constraints.state_bound import NO_BOUND, minimal_states_at_least
from pc_core.feasibility import Feasibility
from pc_core.guide_budget import CPU_FLOP_RATE, CPU_SETUP_S, GuideBudget, exact_cost
from pc_core.lazy_dfa import LazyDFA
from pc_core.lazy_feasibility import LazyFeasibility
from pc_core.lazy_guide import LEAF_BUDGET_S, LEAF_MAX_STATES
from pc_core.leaf_bound import LeafBound, leaf_compiler

WORDS = ["dog", "frisbee", "catch", "throw", "park", "grass"]
SIX = {"keywords": WORDS}


def once(words):
    return {"all": [{"count": w, "min": 1, "max": 1} for w in words]}


def even(words):
    return {"all": [{"any": [{"count": w, "min": m, "max": m} for m in (0, 2)]} for w in words]}


BOUNDED = [  # (spec, the bound): every part counts distinct single words
    (once(WORDS[:4]), 16),
    (even(WORDS[:3]), 27),
    ({"at_least": 3, "of": WORDS[:5]}, 10),  # sets of 2 of the 5
    ({"all": [once(WORDS[:3]), {"word_count": {"min": 3, "max": 8}}]}, 8),
    ({"all": [{"count": "dog", "min": 0, "max": 2}, "park"]}, 6),
    (SIX, 64),
    ({"any": [{"word_at": -3, "word": w} for w in WORDS[:2]]}, 8),  # the 3rd last word is one of two
]
UNBOUNDED = [
    {
        "all": [{"count": "dog", "min": 1, "max": 1}, {"keyword": "dogs", "inflections": False}]
    },  # a shared word
    {"all": [once(WORDS[:3]), {"word_count": {"min": 1, "max": 2}}]},  # too few words for the suffixes
    {"all": [once(WORDS[:3]), {"forbidden": ["grass"]}]},  # another kind of part
    {"any": [{"word_at": -2, "word": "dog"}, {"word_at": -1, "word": "park"}]},  # two positions
    {"any": [{"word_at": 3, "word": "dog"}]},  # from the start
]


@pytest.mark.parametrize(("spec", "bound"), BOUNDED, ids=[str(i) for i in range(len(BOUNDED))])
def test_state_bound_never_exceeds_the_minimal_automaton(tokenizer, spec, bound):
    assert minimal_states_at_least(parse_constraint(spec)) == bound
    assert bound <= compile_constraint(spec, tokenizer).num_states


@pytest.mark.parametrize("spec", UNBOUNDED, ids=[str(i) for i in range(len(UNBOUNDED))])
def test_no_bound_where_the_argument_does_not_hold(spec):
    assert minimal_states_at_least(parse_constraint(spec)) == NO_BOUND


def test_past_the_bound_the_lazy_automaton_comes_without_the_explicit_attempt(tokenizer):
    words = [f"{w}{s}" for w in ("dog", "park", "grass", "frisbee") for s in ("ra", "lo", "mi", "ve")]
    spec = once(words[:13])  # at least 2^13 minimal states, above the cap
    assert minimal_states_at_least(parse_constraint(spec)) > LAZY_AFTER_STATES
    dfa = compile_constraint(spec, tokenizer, lazy=True)
    assert isinstance(dfa, LazyDFA) and "at least 8,192 states" in dfa.note


def test_cpu_budget_is_a_setup_time(tokenizer):
    """The default CPU budget is CPU_SETUP_S of precompute at CPU_FLOP_RATE: six keywords at H = 256 fit it
    within 32 tokens (17 GFLOP here) and not within 40 (23 GFLOP, about 1.9 s on one core: factored)."""
    cpu = GuideBudget.for_device("cpu")
    assert cpu.flops == CPU_SETUP_S * CPU_FLOP_RATE
    six = compile_constraint(SIX, tokenizer)
    assert exact_cost(six, Feasibility(six, 32), 256, 4).fits(cpu)
    assert not exact_cost(six, Feasibility(six, 40), 256, 4).fits(cpu)
    assert exact_cost(six, Feasibility(six, 40), 256, 4).fits(GuideBudget.for_device("cpu", gflops=40))


def test_beams_in_one_state_share_the_lazy_searchs_answer(tokenizer):
    spec = once(WORDS[:4])
    dfa = compile_constraint(spec, tokenizer, max_states=2, lazy=True)
    assert isinstance(dfa, LazyDFA)
    bound = LeafBound(parse_constraint(spec), leaf_compiler(tokenizer, compile_constraint, LEAF_BUDGET_S,
                                                            LEAF_MAX_STATES))  # fmt: skip
    search = LazyFeasibility(dfa, bound, 12)
    first = search.allowed(dfa.initial_state, bound.initial(), 0)
    searched, replayed = search.searched, search.replayed
    again = search.allowed(dfa.initial_state, bound.initial(), 0)  # a second beam in the same state
    assert (search.searched, search.replayed) == (searched, replayed)  # no search, no replay: the answer
    assert np.array_equal(first, again) and first.any()
    fresh = LazyFeasibility(dfa, bound, 12).allowed(dfa.initial_state, bound.initial(), 0)
    assert np.array_equal(first, fresh)
