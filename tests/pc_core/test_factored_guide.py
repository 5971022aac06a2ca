"""The factored guide (issue 26 §3): exact feasibility from the full DFA, lookahead from groups that fit the
budget. Brute force on tiny models: every token it allows leads to a satisfiable text, every text it can
produce satisfies the constraint (the independent checker), and its -inf pattern is the exact guide's."""

import pytest
import torch
from tiny_models import build_micro_tokenizer

from pc_core import compile_constraint
from pc_core.constraints.checker import check_ids
from pc_core.constraints.spec import parse_constraint
from pc_core.decoding import generate
from pc_core.errors import UnsatisfiableConstraint
from pc_core.factored_guide import FactoredGuide, build_guide, conjuncts, factor_groups
from pc_core.feasibility import Feasibility
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.params import DecodeParams

SPECS = [
    {"keywords": ["dog", "cat"]},
    {"all": ["dog", {"word_count": {"min": 2, "max": 3}}]},
    {"all": [{"ordered": ["the", "dog"]}, {"forbidden": ["cat"]}]},
    {"all": [{"word_at": 1, "word": "pan"}, "dog"]},
]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


def _factored(hmm, tokenizer, spec, horizon, min_new_tokens=0, **params):
    constraint = parse_constraint(spec)
    dfa = compile_constraint(constraint, tokenizer)
    params = DecodeParams(guide="factored", **params)
    compile_group = lambda c: compile_constraint(c, tokenizer, blocklist_mask=False)  # noqa: E731
    guide = build_guide(hmm, dfa, constraint, params, compile_group, horizon=horizon,
                        min_new_tokens=min_new_tokens)  # fmt: skip
    assert isinstance(guide, FactoredGuide)
    return dfa, guide


@pytest.mark.parametrize("spec", SPECS, ids=[str(i) for i in range(len(SPECS))])
@pytest.mark.parametrize("min_new_tokens", [0, 1])
def test_every_allowed_path_satisfies_and_none_is_lost(micro, spec, min_new_tokens):
    """Walk every token sequence the factored guide allows (finite q) to the horizon or EOS: each is accepted
    by the independent checker, and the allowed tokens are exactly the exact guide's."""
    horizon = 3
    hmm = HMM.random(3, len(micro), seed=2, eos_token_id=micro.eos_token_id)
    dfa, factored = _factored(hmm, micro, spec, horizon, min_new_tokens)
    exact = ConstraintGuide(hmm, dfa, horizon=horizon, min_new_tokens=min_new_tokens)
    eos, finished = micro.eos_token_id, 0

    def walk(prefix, fstate, estate):
        nonlocal finished
        q = factored.next_log_probs(fstate)[0]
        assert torch.equal(torch.isneginf(q), torch.isneginf(exact.next_log_probs(estate)[0])), prefix
        for x in torch.isfinite(q).nonzero()[:, 0].tolist():
            ids = [*prefix, x]
            if x == eos or len(ids) == horizon:
                assert check_ids(spec, micro, ids), ids
                finished += 1
            else:
                walk(ids, factored.advance(fstate, [x]), exact.advance(estate, [x]))

    walk([], factored.init_state(1), exact.init_state(1))
    assert finished > 0


def test_lookahead_is_the_product_of_the_groups(micro):
    """Each conjunct its own group: q is the sum of their exact log q wherever the full DFA allows the token
    and is not certain."""
    spec = {"all": ["dog", {"word_count": {"min": 2, "max": 3}}]}
    hmm = HMM.random(4, len(micro), seed=3, eos_token_id=micro.eos_token_id)
    dfa = compile_constraint(spec, micro)
    groups = [compile_constraint(p, micro) for p in conjuncts(parse_constraint(spec))]
    singles = [ConstraintGuide(hmm, g, horizon=4) for g in groups]
    guide = FactoredGuide(hmm, dfa, [(g, Feasibility(g, 4)) for g in groups], Feasibility(dfa, 4), 4)
    exact = ConstraintGuide(hmm, dfa, horizon=4)
    for prefix in ([], [0], [0, 13], [4, 5]):
        q = guide.next_log_probs(guide.state_for(prefix))[0]
        want = sum(s.next_log_probs(prefix) for s in singles)
        certain = exact.next_log_probs(prefix) == 0.0
        free = torch.isfinite(q) & ~certain
        torch.testing.assert_close(q[free], want[free], rtol=1e-5, atol=1e-5)
        assert (q[certain] == 0).all()


def test_groups_are_greedy_within_the_budget():
    """Conjuncts join the open group while the total fits; one that fits nowhere steers nothing."""
    from pc_core.guide_budget import GuideBudget, GuideCost

    sizes = {"a": 1, "b": 1, "c": 5, "d": 1}  # cost of a group: (sum of sizes) ** 2, "c" never fits

    def compile_group(constraint):
        return tuple(part.text for part in conjuncts(constraint))

    def cost_of(words):
        total = sum(sizes[w] for w in words) ** 2
        return GuideCost(total, 1, 1, total, float(total)), None

    spec = parse_constraint({"all": ["a", "b", "c", "d"]})
    groups = factor_groups(spec, compile_group, cost_of, GuideBudget(table_bytes=6, flops=6.0))
    assert [g for g, _ in groups] == [("a", "b"), ("d",)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_outputs_satisfy(tokenizer, tiny_lm, tiny_hmm, seed):
    spec = {"all": [{"keywords": ["dog", "frisbee"]}, {"word_count": {"min": 4, "max": 7}}]}
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, max_new_tokens=16, do_sample=True, seed=seed,
                   num_return_sequences=3, guide="factored")  # fmt: skip
    assert out.guide == "factored"
    for seq in out.sequences:
        assert seq.constraint_satisfied and check_ids(spec, tokenizer, seq.token_ids)


def test_unsatisfiable_is_refused_before_decoding(tokenizer, tiny_lm, tiny_hmm):
    spec = {"keywords": ["dog", "frisbee", "catch"]}
    with pytest.raises(UnsatisfiableConstraint, match="max_new_tokens=2"):
        generate(tiny_lm, tokenizer, tiny_hmm, spec, max_new_tokens=2, guide="factored")
