"""The guide against brute-force enumeration, numerics at scale, batching, and bad inputs."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from brute_force_guide import Brute, _close
from byte_support import has_banned_token
from tiny_models import build_micro_tokenizer

from pc_core import compile_constraint
from pc_core.constraints.checker import check_ids
from pc_core.errors import TokenizerMismatch
from pc_core.guide import ConstraintGuide, GuideError, batched_next_log_probs
from pc_core.hmm import HMM


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


SPECS = [
    {"keywords": ["dog"]},
    {"keywords": ["dog", "cat"]},
    {"keyword": "cat", "inflections": False},
    {"forbidden": ["dog"]},
    {"word_at": 2, "word": "pan"},
    {"word_count": {"min": 2, "max": 3}},
    {"ordered": ["the", "dog"]},
    {"not": {"keyword": "the"}},
    {"any": [{"keyword": "pan"}, {"keyword": "cats", "inflections": False}]},
    {"tokens": [6, 4]},
]


@pytest.mark.parametrize("spec", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_matches_brute_force(micro, spec):
    dfa = compile_constraint(spec, micro)
    for h, horizon, prefixes in (
        (2, 3, [[], [0], [13], [12]]),  # 12 is a stray continuation byte (U+FFFD); 11 would be banned
        (3, 4, [[4, 5], [6, 4], [0, 13]]),  # 14^4 continuations from the empty prefix would be slow
        (5, 2, [[], [1]]),
    ):
        hmm = HMM.random(h, len(micro), seed=h * 7 + horizon, eos_token_id=micro.eos_token_id)
        guide = ConstraintGuide(hmm, dfa, horizon=horizon)
        brute = Brute(hmm, micro, spec, horizon)
        for prefix in prefixes:
            _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
            _close(guide.next_log_probs(prefix).numpy(), brute.next_log_probs(prefix))


def test_eos_in_the_middle_and_full_prefix(micro):
    spec = {"keywords": ["dog"]}
    dfa = compile_constraint(spec, micro)
    hmm = HMM.random(3, len(micro), seed=3, eos_token_id=micro.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=3)
    brute = Brute(hmm, micro, spec, 3)
    for prefix in ([0, 13], [13, 0], [1, 0, 13], [0, 1, 2], [1, 1, 1]):
        _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
    assert guide.log_prob([0, 13]).item() == 0.0  # said "dog", then ended: certain
    assert guide.log_prob([1, 13]).item() == -math.inf  # ended without it: impossible


def test_min_new_tokens_matches_brute_force(micro):
    spec = {"keywords": ["dog"]}
    dfa = compile_constraint(spec, micro)
    hmm = HMM.random(3, len(micro), seed=11, eos_token_id=micro.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=4, min_new_tokens=2)
    brute = Brute(hmm, micro, spec, 4, min_new_tokens=2)
    for prefix in ([], [0], [0, 1]):
        _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
        _close(guide.next_log_probs(prefix).numpy(), brute.next_log_probs(prefix))
    assert guide.next_log_probs([0])[micro.eos_token_id].item() == -math.inf


def test_hmm_context_matches_brute_force(micro):
    spec = {"keywords": ["cat"]}
    dfa = compile_constraint(spec, micro)
    hmm = HMM.random(4, len(micro), seed=5, eos_token_id=micro.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=3)
    context = [2, 3, 7]
    brute = Brute(hmm, micro, spec, 3, context=context)
    state = guide.init_state(1, hmm_context=context)
    _close(guide.log_prob(state)[0].item(), brute.log_prob([]))
    _close(guide.next_log_probs(state)[0].numpy(), brute.next_log_probs([]))


def test_numerics_at_scale(tokenizer):
    spec = {"keywords": ["dog", "frisbee", "catch"]}
    dfa = compile_constraint(spec, tokenizer)
    hmm = HMM.random(1024, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    guide = ConstraintGuide(hmm, dfa, horizon=32)
    t = guide.tables
    assert not torch.isnan(t.log_u).any() and not torch.isposinf(t.log_u).any()
    finite = torch.isfinite(t.log_u).all(dim=2)  # (n, S): a row is either all finite or all -inf
    stored = t.feasible[:32] & (t.reached | t.certain[:32])  # rows never reached are not computed (-inf)
    assert torch.equal(finite, stored), "log space underflowed where the DFA says feasible"
    assert torch.equal(torch.isneginf(t.log_u).all(dim=2), ~stored)
    # walk: every satisfiable prefix keeps a finite probability, no NaN anywhere
    ids = tokenizer.encode(" the dog tried to catch a frisbee", add_special_tokens=False)
    state = guide.init_state(1)
    for token in ids:
        lp = guide.next_log_probs(state)[0]
        assert not torch.isnan(lp).any()
        assert torch.isfinite(lp[token]), tokenizer.decode([token])
        state = guide.advance(state, [token])
    # "... frisbee" is still open (the next token could extend the word); a full stop settles it
    assert -math.inf < guide.log_prob(state).item() < 0
    full_stop = tokenizer.encode(".", add_special_tokens=False)[0]
    assert guide.next_log_probs(state)[0, full_stop].item() == 0.0
    assert torch.isfinite(guide.log_prob([])) and guide.log_prob([]).item() < 0


def test_batched_incremental_equals_one_shot(tokenizer):
    spec = {"keywords": ["dog", "cat"]}
    dfa = compile_constraint(spec, tokenizer)
    hmm = HMM.random(64, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=12)
    prefixes = [
        tokenizer.encode(" the dog ran", add_special_tokens=False),
        tokenizer.encode(" a cat sat", add_special_tokens=False),
        tokenizer.encode(" cats and", add_special_tokens=False),
    ]
    length = min(len(p) for p in prefixes)
    prefixes = [p[:length] for p in prefixes]
    state = guide.init_state(3)
    for i in range(length):
        state = guide.advance(state, [p[i] for p in prefixes])
    state = state.select([2, 0, 0, 1])  # reorder and duplicate beams
    batched = guide.next_log_probs(state)
    for row, src in enumerate([2, 0, 0, 1]):
        one = guide.next_log_probs(prefixes[src])
        assert torch.equal(torch.isneginf(batched[row]), torch.isneginf(one))
        torch.testing.assert_close(batched[row], one, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            guide.log_prob(state)[row], guide.log_prob(prefixes[src]), rtol=1e-5, atol=1e-5
        )


def test_mixed_guides_share_one_product(tokenizer):
    hmm = HMM.random(32, len(tokenizer), seed=2, eos_token_id=tokenizer.eos_token_id)
    g1 = ConstraintGuide(hmm, compile_constraint({"keywords": ["dog"]}, tokenizer), horizon=8)
    g2 = ConstraintGuide(hmm, compile_constraint({"word_count": {"min": 2, "max": 4}}, tokenizer), horizon=5)
    s1 = g1.advance(g1.init_state(2), [5, 6])
    s2 = g2.init_state(3)
    together = batched_next_log_probs([(g1, s1), (g2, s2)])
    torch.testing.assert_close(together[0], g1.next_log_probs(s1))
    torch.testing.assert_close(together[1], g2.next_log_probs(s2))
    assert together[0].shape == (2, len(tokenizer)) and together[1].shape == (3, len(tokenizer))


def test_vocabulary_blocks_change_nothing_but_the_product_split(tokenizer):
    """The product split by TokenDFA.token_block equals the one full-vocabulary product."""
    dfa = compile_constraint({"keywords": ["dog", "cat"]}, tokenizer)
    whole = dataclasses.replace(dfa, token_block=None)
    hmm = HMM.random(32, len(tokenizer), seed=5, eos_token_id=tokenizer.eos_token_id)
    split, plain = ConstraintGuide(hmm, dfa, horizon=8), ConstraintGuide(hmm, whole, horizon=8)
    assert (split.tables.num_blocks, plain.tables.num_blocks) == (2, 1)
    prefixes = [
        tokenizer.encode(text, add_special_tokens=False)[:2] for text in (" the dog", " a cat", " hot")
    ]
    state = split.init_state(3)
    for i in range(2):
        state = split.advance(state, [p[i] for p in prefixes])
    # mid-word states send "continue the word" and "start another" tokens to different successors
    assert (split.tables.dense_succ[state.dfa_state] >= 0).sum(1).max() >= 2
    # multiply-adds of the product: each block's rows times its columns, against all rows times all of V
    split_cost = sum(
        len(plan.rows) * len(ids) for plan, ids in zip(split.plan(state).blocks, split.tables.block_tokens)
    )
    assert split_cost < 0.9 * len(plain.plan(state).blocks[0].rows) * len(tokenizer)
    got, want = split.next_log_probs(state), plain.next_log_probs(state)
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)
    together = batched_next_log_probs([(split, state), (plain, state)])  # different splits, one call
    torch.testing.assert_close(together[0], together[1], rtol=1e-5, atol=1e-5)


def test_beams_with_nothing_left_to_decide_need_no_product_rows(tokenizer):
    """Once the keyword is in and its word closed, every successor is certain: that beam's values are exactly
    0 (or -inf for banned tokens) and it adds no row to the product; beams batched with it are unchanged."""
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=4, eos_token_id=tokenizer.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=12)
    texts = [" the dog.", " the", " a dog"]
    prefixes = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    done_state = guide.state_for(prefixes[0])
    assert all(len(plan.rows) == 0 for plan in guide.plan(done_state).blocks)
    done = guide.next_log_probs(done_state)[0]
    assert torch.equal(torch.isneginf(done), torch.from_numpy(dfa.banned_tokens))
    assert (done[~torch.from_numpy(dfa.banned_tokens)] == 0).all()
    # the same beams at one position, in one batch: the shorter prefixes start with filler words
    width = max(len(p) for p in prefixes)
    filler = tokenizer.encode("s", add_special_tokens=False)[0]
    padded = [[filler] * (width - len(p)) + p for p in prefixes]
    state = guide.init_state(len(padded))
    for i in range(width):
        state = guide.advance(state, [p[i] for p in padded])
    together = guide.next_log_probs(state)
    for beam, prefix in enumerate(padded):
        alone = guide.next_log_probs(guide.state_for(prefix))[0]
        assert torch.equal(torch.isneginf(together[beam]), torch.isneginf(alone))
        torch.testing.assert_close(together[beam], alone, rtol=1e-5, atol=1e-6)


def test_precomputed_tables_are_cached(tokenizer):
    hmm = HMM.random(16, len(tokenizer), seed=3, eos_token_id=tokenizer.eos_token_id)
    dfa = compile_constraint({"keywords": ["pan"]}, tokenizer)
    assert ConstraintGuide(hmm, dfa, horizon=10).tables is ConstraintGuide(hmm, dfa, horizon=10).tables
    assert ConstraintGuide(hmm, dfa, horizon=10).tables is not ConstraintGuide(hmm, dfa, horizon=11).tables


def test_bad_inputs(tokenizer, micro):
    hmm = HMM.random(4, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    with pytest.raises(TokenizerMismatch, match="vocabulary"):
        ConstraintGuide(hmm, compile_constraint({"keywords": ["dog"]}, micro), horizon=4)
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    for horizon in (0, -1, 2000, 2.5, True):
        with pytest.raises(GuideError, match="horizon"):
            ConstraintGuide(hmm, dfa, horizon=horizon)
    guide = ConstraintGuide(hmm, dfa, horizon=3)
    with pytest.raises(GuideError, match="token ids"):
        guide.next_log_probs([len(tokenizer)])
    with pytest.raises(GuideError, match="token ids"):
        guide.advance(guide.init_state(1), [-1])
    with pytest.raises(GuideError, match="horizon"):
        guide.next_log_probs([1, 2, 3])
    with pytest.raises(GuideError, match="one per beam"):
        guide.advance(guide.init_state(2), [1])


def test_all_products_are_exact_enumerations_for_every_first_token(micro):
    """q(x) = 0 exactly for the tokens that make the constraint impossible within the horizon."""
    spec = {"keywords": ["dog", "cat"]}
    dfa = compile_constraint(spec, micro)
    hmm = HMM.random(2, len(micro), seed=9, eos_token_id=micro.eos_token_id)
    guide = ConstraintGuide(hmm, dfa, horizon=2)
    q = guide.next_log_probs([]).numpy()
    for x in range(len(micro)):
        possible = any(
            check_ids(spec, micro, [x, y]) and not has_banned_token(micro, [x, y]) for y in range(len(micro))
        )
        assert np.isfinite(q[x]) == possible, micro.convert_ids_to_tokens([x])
    assert list(itertools.islice(range(3), 3)) == [0, 1, 2]


def test_a_state_only_banned_tokens_could_break_is_certain(micro):
    """Banned tokens (here the lead byte of a split character) lead to the DFA's rejecting sink, but they have
    probability 0 in generation: a state from which only they could break the constraint is certain, and
    its tokens get exactly 0, not 1 - 6e-8 from rounding."""
    hmm = HMM.random(3, len(micro), seed=5, eos_token_id=micro.eos_token_id)
    spec = {"keyword": "dog", "inflections": False}
    guide = ConstraintGuide(hmm, compile_constraint(spec, micro), horizon=3)
    q = guide.next_log_probs([0]).numpy()  # after " dog": the word can still grow (" dogs"), all is accepted
    full_stop = 7
    assert q[full_stop] == 0.0
    _close(q, Brute(hmm, micro, spec, 3).next_log_probs([0]))


def _tables_close(a, b):
    assert torch.equal(torch.isneginf(a), torch.isneginf(b))
    finite = torch.isfinite(a)
    torch.testing.assert_close(a[finite], b[finite], rtol=2e-5, atol=2e-5)


def test_linear_backward_step_equals_log_space_path(tokenizer, monkeypatch):
    from pc_core.guide import GUIDE_TABLES
    from pc_core.guide_tables import GuideTables

    dfa = compile_constraint({"all": ["dog", "frisbee", {"word_count": {"min": 3, "max": 9}}]}, tokenizer)
    hmm = HMM.random(64, len(tokenizer), seed=7, eos_token_id=tokenizer.eos_token_id, concentration=3.0)
    tables = {}
    for linear in (True, False):
        monkeypatch.setattr(GuideTables, "LINEAR_PATH", linear)
        GUIDE_TABLES.clear()
        guide = ConstraintGuide(hmm, dfa, horizon=20, min_new_tokens=4)
        assert guide.tables.used_log_space_fallback is (not linear)
        tables[linear] = guide.tables.log_u
    _tables_close(tables[True], tables[False])


def _renormalised(log_rows: torch.Tensor) -> torch.Tensor:
    return log_rows - torch.logsumexp(log_rows, dim=-1, keepdim=True)


@pytest.mark.parametrize("big_class_fraction", [0.01, 0.9], ids=["dense rows", "tail"])
def test_tokens_beyond_float32_range_stay_exact(micro, monkeypatch, big_class_fraction):
    """Emission entries of e^-100 are denormal in float32 (a few bits of precision left). " cat" has them in
    every state (scaled emission columns keep its products in range); " the" is emitted only by a state the
    forward vector gives e^-100, so its products leave float32's normal range and the exact log-space
    fallback must take over: no NaN, no spurious -inf, full precision."""
    import pc_core.guide_ratio as guide_ratio
    import pc_core.guide_tables as tables_module
    from pc_core.guide import GUIDE_TABLES

    monkeypatch.setattr(
        tables_module, "BIG_CLASS_FRACTION", big_class_fraction
    )  # 0.9: every class in the tail
    base = HMM.random(3, len(micro), seed=11, eos_token_id=micro.eos_token_id)
    log_emission = base.log_emission.clone()
    log_emission[:, 1] = -100.0  # " cat"
    log_emission[:, 2] = -100.0  # " the"
    log_emission[0, 2] = -1.0
    log_transition = base.log_transition.clone()
    log_transition[:, 0] = -100.0
    log_initial = base.log_initial.clone()
    log_initial[0] = -100.0
    hmm = HMM(_renormalised(log_initial), _renormalised(log_transition), _renormalised(log_emission),
              micro.eos_token_id)  # fmt: skip
    spec = {"keywords": ["dog"]}
    dfa = compile_constraint(spec, micro)
    fallback_tokens = []
    real = guide_ratio.exact_log_ratio

    def spy(guide, state, beams, tokens):
        fallback_tokens.extend(tokens.tolist())
        return real(guide, state, beams, tokens)

    monkeypatch.setattr(guide_ratio, "exact_log_ratio", spy)
    GUIDE_TABLES.clear()
    guide = ConstraintGuide(hmm, dfa, horizon=3)
    brute = Brute(hmm, micro, spec, 3)
    for prefix in ([], [6], [0]):
        got = guide.next_log_probs(prefix).numpy()
        want = brute.next_log_probs(prefix)
        assert np.isfinite(want[[1, 2]]).all()
        _close(got, want)
    assert 2 in fallback_tokens and 1 not in fallback_tokens


def test_underflow_in_the_linear_path_falls_back_to_log_space(tokenizer, monkeypatch):
    """If a scaled row underflows where the DFA says feasible, the step is redone in log space."""
    import pc_core.guide_backward as backward_module
    from pc_core.guide import GUIDE_TABLES

    dfa = compile_constraint({"keywords": ["dog", "cat"]}, tokenizer)
    hmm = HMM.random(16, len(tokenizer), seed=3, eos_token_id=tokenizer.eos_token_id)
    GUIDE_TABLES.clear()
    reference = ConstraintGuide(hmm, dfa, horizon=10).tables.log_u
    real = backward_module.edge_scaled_sum
    calls = []

    def underflowing(*args, **kwargs):
        w, scale, lossy = real(*args, **kwargs)
        calls.append(1)
        return w, scale, lossy or len(calls) == 3  # as if a term fell out of float32 at the third step

    monkeypatch.setattr(backward_module, "edge_scaled_sum", underflowing)
    GUIDE_TABLES.clear()
    fallback = ConstraintGuide(hmm, dfa, horizon=10)
    assert fallback.tables.used_log_space_fallback and len(calls) == 3
    _tables_close(fallback.tables.log_u[:2], reference[:2])  # steps before the underflow: the fast path
    _tables_close(fallback.tables.log_u, reference)  # the rest recomputed exactly


def test_edge_scaled_sum_reports_terms_it_cannot_hold():
    from pc_core.kernels.reference import edge_logsumexp, edge_scaled_sum

    mass = torch.rand(3, 5) + 0.1
    values = torch.rand(3, 5) + 0.1
    src, dst = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 0])
    for gap, lossy_expected in ((10.0, False), (200.0, True)):
        scale = torch.tensor([0.0, 0.0, -gap])
        w, w_scale, lossy = edge_scaled_sum(mass, values, scale, src, dst, 2)
        assert lossy is lossy_expected
        if not lossy:
            padded_mass = torch.cat([mass.log(), torch.full((1, 5), float("-inf"))])
            exact = edge_logsumexp(padded_mass, values.log() + scale[:, None], torch.tensor([[0, 1], [2, 3]]),
                                   torch.tensor([[1, 2], [0, 0]]))  # fmt: skip
            torch.testing.assert_close(w.log() + w_scale[:, None], exact)


def test_bf16_emission_is_close_to_fp32(tokenizer):
    dfa = compile_constraint({"keywords": ["dog", "park"]}, tokenizer)
    hmm = HMM.random(32, len(tokenizer), seed=4, eos_token_id=tokenizer.eos_token_id)
    prefix = tokenizer.encode(" the dog", add_special_tokens=False)
    full = ConstraintGuide(hmm, dfa, horizon=8).next_log_probs(prefix)
    half = ConstraintGuide(hmm, dfa, horizon=8, emission_dtype=torch.bfloat16).next_log_probs(prefix)
    assert torch.equal(torch.isneginf(full), torch.isneginf(half))  # the -inf pattern is structural: exact
    finite = torch.isfinite(full)
    torch.testing.assert_close(half[finite], full[finite], atol=0.05, rtol=0.05)
