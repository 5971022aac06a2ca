"""Class masses by block totals minus gathered tokens, against a direct float64 sum over the vocabulary."""

import numpy as np
import pytest
import torch

from pc_core import compile_constraint
from pc_core.class_masses import REMAINDER_FLOOR, class_masses
from pc_core.hmm import HMM

SPECS = [
    {"keywords": ["dog", "frisbee", "catch"]},
    {"forbidden": ["cat"]},
    {"word_count": {"min": 2, "max": 5}},
    {"tokens": [6, 4]},  # one large class spanning both vocabulary blocks
]


def direct(hmm, dfa):
    """Per class, the float64 sum of B[z, x] over its tokens that are not banned; the banned mass."""
    probs = hmm.log_emission.double().exp().T  # (V, H)
    banned = torch.from_numpy(dfa.banned_tokens)
    token_class = torch.from_numpy(dfa.token_class.astype(np.int64))
    masses = torch.zeros(len(dfa.class_sizes), hmm.hidden_size, dtype=torch.float64)
    masses.index_add_(0, token_class[~banned], probs[~banned])
    return masses, probs[banned].sum(dim=0)


def run(hmm, dfa):
    block_of = dfa.token_block.astype(np.int64)
    return class_masses(hmm, dfa.token_class, len(dfa.class_sizes), block_of, "test", dfa.banned_tokens)


@pytest.mark.parametrize("spec", SPECS, ids=[str(i) for i in range(len(SPECS))])
def test_masses_equal_the_direct_sum(tokenizer, spec):
    dfa = compile_constraint(spec, tokenizer)
    assert dfa.banned_tokens.any() and len(np.unique(dfa.token_block)) == 2
    hmm = HMM.random(16, len(tokenizer), seed=3, eos_token_id=tokenizer.eos_token_id, concentration=2.0)
    masses, banned_mass = run(hmm, dfa)
    want, want_banned = direct(hmm, dfa)
    torch.testing.assert_close(masses, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(banned_mass, want_banned, rtol=1e-12, atol=0)
    assert (masses[np.unique(dfa.token_class[dfa.banned_tokens])] == 0).all()  # banned-only classes


def test_block_totals_are_cached_float64_sums(tokenizer):
    hmm = HMM.random(8, len(tokenizer), seed=1, eos_token_id=tokenizer.eos_token_id)
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    block_of = torch.from_numpy(dfa.token_block.astype(np.int64))
    totals = hmm.block_totals(block_of, "k")
    probs = hmm.log_emission.double().exp()
    want = torch.stack([probs[:, block_of == k].sum(dim=1) for k in range(2)])
    torch.testing.assert_close(totals, want, rtol=1e-13, atol=0)
    assert hmm.block_totals(block_of, "k") is totals


def test_a_remainder_that_subtraction_cannot_resolve_is_summed_directly(tokenizer):
    """A hidden state that emits the large classes with ~e^-50 each (true remainder ~1e-19 of the total).
    Block totals carry float64 rounding of ~1e-16 relative, depending on summation order (a GPU reduction
    differs from this CPU's); the totals are perturbed by that much, so block total minus the gathered
    tokens is noise there and only the direct sum of the fallback can be exact."""
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    block_of = dfa.token_block.astype(np.int64)
    counts = np.zeros((2, len(dfa.class_sizes)), np.int64)
    np.add.at(counts, (block_of, dfa.token_class), 1)
    in_large_class = dfa.token_class == counts.argmax(axis=1)[block_of]
    hmm = HMM.random(6, len(tokenizer), seed=2, eos_token_id=tokenizer.eos_token_id)
    logits = hmm.log_emission.clone()
    logits[4, torch.from_numpy(in_large_class)] = -50.0
    hmm = HMM(hmm.log_initial, hmm.log_transition, torch.log_softmax(logits, dim=1), hmm.eos_token_id)
    hmm.block_totals(torch.from_numpy(block_of), "test").mul_(1 + 1e-15)
    masses, _ = run(hmm, dfa)
    want, _ = direct(hmm, dfa)
    large = np.unique(counts.argmax(axis=1))
    assert (want[large, 4] / want[:, 4].sum() < REMAINDER_FLOOR).all()  # the case the fallback is for
    torch.testing.assert_close(masses, want, rtol=1e-12, atol=0)
