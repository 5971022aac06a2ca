"""The lazy automaton and guide (issue 26 §3-4): past the explicit automaton's budget the constraint is still
guaranteed. Brute force on tiny models: the lazy automaton accepts what the explicit one and the independent
checker accept, its search's feasibility equals the explicit tables', the guide allows exactly the tokens the
exact guide allows; the families and the editing case that were refused are served and satisfied."""

import itertools

import pytest
import torch
from tiny_models import build_micro_tokenizer

from pc_core import compile_constraint
from pc_core.constraints.checker import check_ids
from pc_core.constraints.spec import WordAt, parse_constraint, split_affixes, with_affixes
from pc_core.decoding import generate
from pc_core.errors import ConstraintTooComplex, UnsatisfiableConstraint
from pc_core.feasibility import Feasibility
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.lazy_dfa import LazyDFA
from pc_core.lazy_feasibility import LazyFeasibility
from pc_core.lazy_guide import LazyGuide, build_lazy_guide
from pc_core.leaf_bound import LeafBound, leaf_compiler
from pc_core.params import DecodeParams

SPECS = [
    {"keywords": ["dog", "cat"]},
    {"all": ["dog", {"word_count": {"min": 2, "max": 3}}]},
    {"all": [{"count": "dog", "min": 1, "max": 1}, {"count": "cat", "min": 1, "max": 1}]},
    {"all": [{"any": [{"count": "dog", "min": m, "max": m} for m in (0, 2)]}, "pan"]},
    {"at_least": 2, "of": ["dog", "cat", "pan"]},
    {"any": [{"word_at": -2, "word": "dog"}, {"word_at": -1, "word": "cat"}]},
    {"all": [{"ordered": ["the", "dog"]}, {"forbidden": ["cat"]}]},
    # " cats" is both keywords: two classes of leaves (LeafBound._k_of_classes)
    {
        "at_least": 2,
        "of": [{"keyword": "cat", "pos": "noun"}, {"keyword": "cats", "inflections": False}, "pan"],
    },
]
IDS = [str(i) for i in range(len(SPECS))]


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


def _lazy(micro, spec):
    """The lazy automaton, as compile_constraint gives it past a (here: tiny) state cap."""
    dfa = compile_constraint(spec, micro, max_states=2, lazy=True)
    assert isinstance(dfa, LazyDFA)
    return dfa


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_lazy_automaton_accepts_what_the_explicit_one_and_the_checker_accept(micro, spec):
    lazy, explicit = _lazy(micro, spec), compile_constraint(spec, micro)
    for length in range(4):
        for ids in itertools.product(range(len(micro)), repeat=length):
            expected = explicit.accepts(ids)
            assert lazy.accepts(ids) == expected, ids
            if micro.eos_token_id not in ids and not _banned(micro, ids):
                assert check_ids(spec, micro, list(ids)) == expected, ids


@pytest.mark.parametrize("spec", [*SPECS, with_affixes({"all": ["dog", {"word_count": {"min": 2}}]}, " cat")])
def test_peek_is_step_without_expanding(micro, spec):
    """LazyDFA.peek (the witness replay's step) gives the state step gives after every prefix of up to 3
    tokens (peeked first, then stepped on the same automaton: one product state, one id), and leaves the state
    unexpanded."""
    lazy = _lazy(micro, spec)
    for length in range(1, 4):
        for ids in itertools.product(range(len(micro)), repeat=length):
            a = lazy.run(ids[:-1])
            expanded = a in lazy.explored.rows
            peeked = lazy.peek(a, ids[-1])
            assert (a in lazy.explored.rows) == expanded or lazy.compiler.affixes is not None, ids
            assert peeked == lazy.step(a, ids[-1]), ids


def _banned(micro, ids):
    from byte_support import has_banned_token

    return has_banned_token(micro, list(ids))


def _leaf_compiler(micro, far):
    """The leaf compiler; with `far`, one that refuses `word_at` counted from the end (as past
    FROM_END_EXPLICIT, which the tests then set to 1)."""
    compile_leaf = leaf_compiler(micro, compile_constraint, 5.0, 4096)
    if not far:
        return compile_leaf

    def compile_or_refuse(constraint):
        body = split_affixes(constraint)[0]
        return None if isinstance(body, WordAt) and body.index < 0 else compile_leaf(constraint)

    return compile_or_refuse


BOUND_SPECS = [
    *SPECS,
    {"any": [{"word_at": -2, "word": "dog"}, {"word_at": -2, "word": "cat"}]},
    {"all": [{"word_at": -3, "word": "dog"}, "pan"]},
    with_affixes(SPECS[7], " dog"),  # the ending token brings every leaf closer at once
]
BOUND_IDS = [str(i) for i in range(len(BOUND_SPECS))]


@pytest.mark.parametrize("spec", BOUND_SPECS, ids=BOUND_IDS)
@pytest.mark.parametrize("min_new_tokens", [0, 2])
@pytest.mark.parametrize("far", [False, True], ids=["explicit", "relaxed"])
def test_lazy_feasibility_equals_the_explicit_tables(micro, spec, min_new_tokens, far, monkeypatch):
    """After every prefix of up to 2 tokens, with every number of tokens left: the search's answer (never
    undecided on these sizes) is the explicit Feasibility's, with `word_at -k` leaves explicit or relaxed."""
    import pc_core.leaf_bound as leaf_bound

    if far:
        monkeypatch.setattr(leaf_bound, "FROM_END_EXPLICIT", 1)
    horizon = 4
    lazy, explicit = _lazy(micro, spec), compile_constraint(spec, micro)
    bound = LeafBound(parse_constraint(spec), _leaf_compiler(micro, far))
    search = LazyFeasibility(lazy, bound, horizon, min_new_tokens)
    table = Feasibility(explicit, horizon, min_new_tokens)
    for length in range(3):
        for ids in itertools.product(range(len(micro)), repeat=length):
            state, leaves = lazy.initial_state, bound.initial()
            for token in ids:
                state, leaves = lazy.step(state, token), bound.advance(leaves, token)
            expected = bool(table.feasible[horizon - length][explicit.run(ids)])
            if any(lazy.is_ended(lazy.run(ids[:i])) for i in range(length)):
                continue  # ended before the last token: the explicit run stops there too
            assert search.feasible(state, leaves, horizon - length, length) is expected, ids
    assert search.undecided == 0


@pytest.mark.parametrize("spec", BOUND_SPECS, ids=BOUND_IDS)
@pytest.mark.parametrize("far", [False, True], ids=["explicit", "relaxed"])
def test_leaf_bound_never_exceeds_the_tokens_still_needed(micro, spec, far, monkeypatch):
    """After every prefix of up to 3 tokens the bound is at most the explicit automaton's fewest tokens to
    acceptance (so it never cuts a feasible branch), with `word_at -k` relaxed (the word occurs and the text
    has k words) or explicit, and it is tight somewhere (the test can fail)."""
    import pc_core.leaf_bound as leaf_bound

    if far:
        monkeypatch.setattr(leaf_bound, "FROM_END_EXPLICIT", 1)
    explicit = compile_constraint(spec, micro)
    bound = LeafBound(parse_constraint(spec), _leaf_compiler(micro, far))
    needed = explicit.steps_to_accept
    positive = 0
    for length in range(4):
        for ids in itertools.product(range(len(micro)), repeat=length):
            state, leaves = explicit.run(ids), bound.initial()
            for token in ids:
                leaves = bound.advance(leaves, token)
            truth = int(needed[state]) if needed[state] >= 0 else leaf_bound.FAR
            lower = int(bound.lower(leaves[None])[0])
            assert lower <= truth, ids
            positive += 0 < lower == truth
    no_leaf = far and spec is SPECS[5]  # its refused `word_at -1` leaves the `any` with no bound at all
    assert positive > 0 or no_leaf


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("min_new_tokens", [0, 1])
def test_lazy_guide_allows_exactly_the_exact_guides_tokens(micro, spec, min_new_tokens):
    """Walk every token sequence the lazy guide allows to the horizon or EOS: each is accepted by the
    independent checker, and the allowed tokens are exactly the exact guide's at every step."""
    horizon = 3
    hmm = HMM.random(3, len(micro), seed=2, eos_token_id=micro.eos_token_id)
    constraint = parse_constraint(spec)
    guide = build_lazy_guide(hmm, _lazy(micro, spec), constraint, DecodeParams(), micro, horizon=horizon,
                             min_new_tokens=min_new_tokens)  # fmt: skip
    exact = ConstraintGuide(
        hmm, compile_constraint(spec, micro), horizon=horizon, min_new_tokens=min_new_tokens
    )
    assert isinstance(guide, LazyGuide) and guide.kind == "lazy"
    eos, finished = micro.eos_token_id, 0

    def walk(prefix, lstate, estate):
        nonlocal finished
        q = guide.next_log_probs(lstate)[0]
        assert torch.equal(torch.isneginf(q), torch.isneginf(exact.next_log_probs(estate)[0])), prefix
        for x in torch.isfinite(q).nonzero()[:, 0].tolist():
            ids = [*prefix, x]
            if x == eos or len(ids) == horizon:
                assert check_ids(spec, micro, ids[:-1] if x == eos else ids), ids
                finished += 1
            else:
                walk(ids, guide.advance(lstate, [x]), exact.advance(estate, [x]))

    if guide.can_start():
        walk([], guide.init_state(1), exact.init_state(1))
        assert finished > 0


def test_lookahead_is_the_product_of_the_conjuncts(micro):
    """Where the token is allowed, q is the sum of the conjuncts' exact log q (the factored lookahead)."""
    spec = {"all": ["dog", {"word_count": {"min": 2, "max": 3}}]}
    hmm = HMM.random(4, len(micro), seed=3, eos_token_id=micro.eos_token_id)
    guide = build_lazy_guide(
        hmm, _lazy(micro, spec), parse_constraint(spec), DecodeParams(), micro, horizon=4
    )
    singles = [ConstraintGuide(hmm, compile_constraint(p, micro), horizon=4) for p in spec["all"]]
    q = guide.next_log_probs(guide.init_state(1))[0]
    total = sum(g.next_log_probs(g.init_state(1))[0] for g in singles)
    finite = torch.isfinite(q)
    assert finite.any()
    torch.testing.assert_close(q[finite], total[finite])


KEYWORDS = ["dog", "frisbee", "park", "cat", "couch", "pan", "coffee", "snow", "field", "tree"]


def test_once_over_ten_keywords_is_served_and_satisfied(tokenizer, tiny_lm, tiny_hmm):
    """The `once` family with 10 keywords: past the explicit automaton's cap (2^10 states), the lazy guide
    serves it and the output holds each keyword exactly once."""
    spec = {"all": [{"count": k, "min": 1, "max": 1} for k in KEYWORDS]}
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=32, num_beams=2,
                   max_states=512)  # fmt: skip
    assert out.guide == "lazy"
    assert check_ids(spec, tokenizer, out.sequences[0].token_ids)
    assert out.sequences[0].constraint_satisfied


def test_editing_case_with_three_keywords_and_a_word_range_is_served(tokenizer, tiny_lm, tiny_hmm):
    """The editing benchmark's last refusal (more explored states than its cap): served and satisfied."""
    spec = {
        "all": [{"keywords": ["come", "mike goes", "clara thought"]}, {"word_count": {"min": 26, "max": 32}}]
    }
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=48, num_beams=2,
                   max_states=256)  # fmt: skip
    assert out.guide == "lazy"
    assert check_ids(spec, tokenizer, out.sequences[0].token_ids)


def test_unsatisfiable_within_the_horizon_is_refused_before_decoding(tokenizer, tiny_lm, tiny_hmm):
    spec = {"all": [{"count": k, "min": 1, "max": 1} for k in KEYWORDS]}
    with pytest.raises(UnsatisfiableConstraint):
        generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=6, max_states=512)


def test_exact_only_still_refuses_past_the_explicit_budget(tokenizer, tiny_lm, tiny_hmm):
    spec = {"all": [{"count": k, "min": 1, "max": 1} for k in KEYWORDS]}
    with pytest.raises(ConstraintTooComplex):
        generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=32, max_states=512,
                 guide="exact")  # fmt: skip


@pytest.mark.parametrize("spec", SPECS[:3], ids=IDS[:3])
@pytest.mark.parametrize("budget", ["STEP_BUDGET", "REQUEST_BUDGET"])
def test_past_the_step_budget_only_proven_tokens_are_allowed_and_one_always_is(
    micro, spec, budget, monkeypatch
):
    """With no search budget left in a step (or in the request), the guide allows only tokens already proven
    feasible (by the search or a replayed witness): never an empty set (the witness that proved the state
    leaves its next token), never a token the exact guide forbids, and the greedy walk ends satisfied."""
    import pc_core.lazy_feasibility as lazy_feasibility

    monkeypatch.setattr(lazy_feasibility, budget, -1)
    horizon = 4
    hmm = HMM.random(3, len(micro), seed=2, eos_token_id=micro.eos_token_id)
    guide = build_lazy_guide(hmm, _lazy(micro, spec), parse_constraint(spec), DecodeParams(), micro,
                             horizon=horizon)  # fmt: skip
    exact = ConstraintGuide(hmm, compile_constraint(spec, micro), horizon=horizon)
    assert guide.can_start()
    state, estate, ids = guide.init_state(1), exact.init_state(1), []
    for _ in range(horizon):
        allowed = torch.isfinite(guide.next_log_probs(state)[0])
        assert allowed.any() and not (allowed & torch.isneginf(exact.next_log_probs(estate)[0])).any()
        token = int(allowed.nonzero()[0, 0])
        if token == micro.eos_token_id:
            break
        ids.append(token)
        state, estate = guide.advance(state, [token]), exact.advance(estate, [token])
    assert check_ids(spec, micro, ids)
