"""Automata sized by what their guide costs (issue 26 §2): the quoted refusals are served, the budget follows
H and the device, only live (step, state) pairs get rows, and bfloat16 rows stay within their bound."""

import numpy as np
import pytest
import torch
from tiny_models import build_micro_tokenizer

from pc_core import compile_constraint
from pc_core.constraints.checker import check_ids
from pc_core.decoding import generate
from pc_core.errors import ConstraintTooComplex
from pc_core.feasibility import Feasibility
from pc_core.guide import GUIDE_TABLES, ConstraintGuide
from pc_core.guide_budget import GuideBudget, exact_cost
from pc_core.hmm import HMM

COWORKERS = {"all": [{"keywords": ["coworkers", "talk"]}, {"word_count": {"min": 28, "max": 31}}]}
SIX = {"keywords": ["dog", "frisbee", "catch", "throw", "park", "grass"]}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


@pytest.mark.parametrize(("spec", "states"), [(COWORKERS, 2157), (SIX, 3330)], ids=["coworkers", "six"])
def test_quoted_constraints_compile_with_default_limits(tokenizer, spec, states):
    """Refused before ("the minimal automaton has 2157 states, above the cap of 2048"; 3,330 for six)."""
    dfa = compile_constraint(spec, tokenizer)
    assert dfa.num_states == states


@pytest.mark.parametrize(("spec", "horizon"), [(COWORKERS, 44), (SIX, 32)], ids=["coworkers", "six"])
def test_budget_follows_hidden_size(tokenizer, spec, horizon):
    """The same automaton fits a CPU's budget at H = 256 and not at H = 4096."""
    dfa = compile_constraint(spec, tokenizer)
    feasibility = Feasibility(dfa, horizon)
    cpu = GuideBudget.for_device("cpu")
    assert exact_cost(dfa, feasibility, 256, 4).fits(cpu)
    big = exact_cost(dfa, feasibility, 4096, 4)
    assert not big.fits(cpu)
    assert big.fits(GuideBudget.for_device("cpu", table_bytes=2**40, gflops=1e6))
    gpu = GuideBudget.for_device("cuda")
    assert gpu.table_bytes > cpu.table_bytes and gpu.flops > cpu.flops and gpu.table_dtype == torch.bfloat16


def test_word_count_makes_most_pairs_dead(tokenizer):
    dfa = compile_constraint(COWORKERS, tokenizer)
    feasibility = Feasibility(dfa, 44)
    assert feasibility.live_pairs < 0.5 * dfa.num_states * 44


def test_coworkers_served_and_satisfied(tokenizer, tiny_lm, tiny_hmm):
    out = generate(tiny_lm, tokenizer, tiny_hmm, COWORKERS, max_new_tokens=44, num_beams=2)
    assert out.guide == "exact" and out.dfa_states == 2157
    for seq in out.sequences:
        assert seq.constraint_satisfied and check_ids(COWORKERS, tokenizer, seq.token_ids)


def test_exact_only_past_the_budget_says_what_it_would_cost(tokenizer, tiny_lm, tiny_hmm):
    with pytest.raises(ConstraintTooComplex, match=r"exact guide would need .* live \(step, state\) pairs"):
        generate(
            tiny_lm, tokenizer, tiny_hmm, SIX, max_new_tokens=32, guide="exact", guide_budget_gflops=1e-4
        )


def test_past_the_budget_auto_runs_factored(tokenizer, tiny_lm, tiny_hmm):
    out = generate(
        tiny_lm, tokenizer, tiny_hmm, SIX, max_new_tokens=32, num_beams=2, guide_budget_gflops=1e-4
    )
    assert out.guide == "factored"
    assert all(s.constraint_satisfied and check_ids(SIX, tokenizer, s.token_ids) for s in out.sequences)


def _dense_reference(dfa, horizon, min_new_tokens):
    """feasible / certain / reach the direct way, over the (S, C) class table."""
    delta = dfa.transitions.astype(np.int64)
    banned = dfa.banned_tokens
    possible = np.bincount(dfa.token_class[~banned], minlength=dfa.num_classes) > 0
    ending = ~dfa.ended[:, None] & dfa.ended[delta]
    feasible = np.zeros((horizon + 1, dfa.num_states), bool)
    certain = np.zeros_like(feasible)
    reach = np.zeros_like(feasible)
    feasible[0] = certain[0] = dfa.accepting
    reach[0, dfa.initial_state] = True
    for r in range(1, horizon + 1):
        ok = ~ending if horizon - r + 1 < min_new_tokens + 1 else np.ones_like(ending)
        feasible[r] = (ok & feasible[r - 1][delta]).any(axis=1)
        certain[r] = ((ok & certain[r - 1][delta]) | ~possible).all(axis=1)
        reach[r, np.unique(delta[reach[r - 1]])] = True
    return feasible, certain, reach


@pytest.mark.parametrize("spec", [{"keywords": ["dog", "cat"]}, {"word_count": {"min": 2, "max": 3}},
                                  {"ordered": ["the", "dog"]}, {"forbidden": ["dog"]}])  # fmt: skip
@pytest.mark.parametrize("min_new_tokens", [0, 2])
def test_feasibility_on_edges_equals_class_table(micro, spec, min_new_tokens):
    dfa = compile_constraint(spec, micro)
    f = Feasibility(dfa, 6, min_new_tokens)
    feasible, certain, reach = _dense_reference(dfa, 6, min_new_tokens)
    assert np.array_equal(f.feasible, feasible) and np.array_equal(f.certain, certain)
    assert np.array_equal(f.reach, reach)


def test_only_live_pairs_get_rows_and_lookups_match(tokenizer):
    """Rows exist for live pairs only; every state a prefix reaches reads the same values as before."""
    dfa = compile_constraint({"all": ["dog", {"word_count": {"min": 3, "max": 5}}]}, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=12)
    t = guide.tables
    assert t.stored_rows == Feasibility(dfa, 12).live_pairs < dfa.num_states * 11
    dense = t.log_u  # (n, S, H)
    live = t.reached & t.feasible[:12] & ~t.certain[:12]
    assert torch.isfinite(dense[live]).all() and torch.isneginf(dense[~t.feasible[:12]]).all()


@pytest.mark.parametrize(
    "spec", [{"keywords": ["dog", "frisbee", "catch"]}, COWORKERS], ids=["keywords", "count"]
)
def test_bfloat16_rows_within_bound(tokenizer, spec):
    """bfloat16 rows (scaled to max 1, float32 scale) change each stored U by a relative 2^-9 at most, so
    log q moves by at most log(1 / (1 - 2^-9)) < 2^-8 (docs/method.md §5.9); the -inf pattern is identical."""
    dfa = compile_constraint(spec, tokenizer)
    hmm = HMM.random(64, len(tokenizer), seed=5, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    GUIDE_TABLES.clear()
    exact = ConstraintGuide(hmm, dfa, horizon=36)
    half = ConstraintGuide(hmm, dfa, horizon=36, table_dtype=torch.bfloat16)
    assert half.tables.log_rows.dtype == torch.bfloat16 and not half.tables.used_log_space_fallback
    assert half.tables.log_rows.element_size() * 2 == exact.tables.log_rows.element_size()
    ids = tokenizer.encode(" the dog tried to catch a frisbee and they talk", add_special_tokens=False)
    worst = 0.0
    for t in range(0, len(ids), 3):
        a, b = exact.next_log_probs(ids[:t]), half.next_log_probs(ids[:t])
        assert torch.equal(torch.isneginf(a), torch.isneginf(b))
        finite = torch.isfinite(a)
        worst = max(worst, float((a[finite] - b[finite]).abs().max()))
    assert worst <= 2**-8, worst
