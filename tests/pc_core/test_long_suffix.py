"""Infilling with suffixes of any length (pc_core.infill): the HMM's backward pass over the suffix against
forward enumeration, the guide against brute force with suffixes longer than the horizon, decoding end to
end (span + junction generated, the rest attached), ranking by span + suffix, and FIM prompts.

The micro vocabulary (tests/tiny_models.py): 0 " dog", 1 " cat", 2 " the", 3 " pan", 4 "dog", 5 "s", 6 " ", 7 ".",
8 " do", 9 "g", 10 " cats", 11 "Ã" and 12 "©" (banned halves of "é"), 13 EOS.
"""

import math
import random

import numpy as np
import pytest
import torch
from brute_force_guide import _close
from test_infilling import AffixBrute, expected
from tiny_models import build_micro_tokenizer, corpus_text

from pc_core import compile_constraint
from pc_core.constraints.checker import check_text, decode_continuation, judge_ids
from pc_core.constraints.spec import MAX_SUFFIX_CHARS, with_affixes
from pc_core.decoding import BatchDecoder, generate, prepare
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.infill import (
    MAX_JUNCTION_CHARS,
    RANK_FIM,
    RANK_JUNCTION,
    RANK_SUFFIX,
    SuffixPlan,
    fim_tokens,
    split_suffix,
    terminal_vector,
)
from pc_core.lm import continuation_logprobs
from pc_core.params import DecodeParams, DecodingError


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    return build_micro_tokenizer(tmp_path_factory.mktemp("micro"))


def long_suffix(n_chars: int, seed: int = 0) -> str:
    """Story-like text of about n_chars characters, starting with a space and a word."""
    words = corpus_text(2, seed).split()
    rng = random.Random(seed)
    out = ""
    while len(out) < n_chars:
        out += " " + rng.choice(words)
    return out[:n_chars]


# ------------------------------------------------------------------------------------------ the split


@pytest.mark.parametrize(
    "suffix, junction",
    [
        (" sat on the mat.", " sat"),
        ("s and cats", "s"),
        (". The end", "."),
        ("\n\nThe dog", "\n\nThe"),
        ("   ", "   "),
        ("x" * 50 + " y", "x" * MAX_JUNCTION_CHARS),
    ],
)
def test_the_junction_is_the_first_word_and_splitting_it_again_changes_nothing(suffix, junction):
    got, rest = split_suffix(suffix)
    assert (got, got + rest) == (junction, suffix)
    assert split_suffix(got) == (got, "")


# ------------------------------------------------------------------------------------------ the HMM


def test_backward_pass_equals_forward_enumeration():
    hmm = HMM.random(5, 9, seed=3, eos_token_id=8)
    a = hmm.log_transition.double().exp().numpy()
    b = hmm.log_emission.double().exp().numpy()
    tokens = [3, 1, 4, 1, 5, 2, 6]
    got = hmm.suffix_log_backward(tokens).numpy()
    for z in range(5):
        f = np.eye(5)[z]  # z emits the first token
        for i, x in enumerate(tokens):
            f = f * b[:, x]
            if i + 1 < len(tokens):
                f = f @ a
        assert math.isclose(got[z], math.log(f.sum()), rel_tol=1e-6)  # A is read in float32


def test_backward_pass_stays_finite_over_thousands_of_tokens():
    hmm = HMM.random(16, 50, seed=1, eos_token_id=49)
    out = hmm.suffix_log_backward(list(range(49)) * 60)  # 2,940 tokens: probabilities near e^-11000
    assert torch.isfinite(out).all() and float(out.max()) < -1000


# ------------------------------------------------------------------------------------------ the guide


class RestBrute(AffixBrute):
    """AffixBrute where the text must also be followed by `rest` tokens after the token that ended it: a
    continuation's mass is P(span + junction) times P(rest | the hidden state after it), by a forward pass
    over the rest with the unrestricted emission (the rest is observed, not generated)."""

    def __init__(self, *args, rest=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.rest = rest

    def rest_mass(self, a):
        f = a
        for i, x in enumerate(self.rest):
            f = f * self.B0[:, x]
            if i + 1 < len(self.rest):
                f = f @ self.A
        return f.sum()

    def mass(self, prefix, a, k):
        ids = list(prefix)
        found = judge_ids(self.spec, self.tok, ids) if ids else None
        if found is not None and found.reason != "length":  # the text ended at the last token
            if not expected(self.tok, self.spec, ids, self.min_new):
                return 0.0
            return self.rest_mass(a) if found.reason == "suffix" else 0.0
        if k == 0:
            return 0.0  # the text must end (with the junction) within the horizon
        return sum(self.mass(prefix + (x,), (a * self.B[:, x]) @ self.A, k - 1) for x in range(self.V))


LONG_CASES = [
    # (spec, suffix, rest's token ids, horizon, prefixes): the rest is longer than the horizon
    (
        {"keywords": ["cat"]},
        " dogs. the cat the pan dog",
        (6, 2, 1, 2, 3, 0, 7),
        4,
        [[1], [1, 8], [1, 0], [0]],
    ),
    ({"keywords": ["cat"]}, " dogs. the pan", (2, 3, 7, 7, 2, 3), 5, [[1, 8], [1, 6], [1, 0, 5]]),
    ({"word_count": {"max": 1}}, "og. the pan", (2, 3, 2, 3, 2), 3, [[], [0], [8]]),  # straddles the junction
    ({"word_count": {"min": 1}}, ". the cat", (2, 1, 6, 1, 0, 0, 0, 0), 3, [[], [4]]),
]


@pytest.mark.parametrize("case", LONG_CASES, ids=[str(i) for i in range(len(LONG_CASES))])
def test_guide_with_the_whole_suffix_matches_brute_force(micro, case):
    spec, suffix, rest_ids, horizon, prefixes = case
    junction, rest = split_suffix(suffix)
    constraint = with_affixes(spec, junction)
    dfa = compile_constraint(constraint, micro)
    for h in (2, 3):
        hmm = HMM.random(h, len(micro), seed=h * 13 + horizon, eos_token_id=micro.eos_token_id)
        terminal = terminal_vector(hmm, SuffixPlan(suffix, junction, rest, rest_ids))
        guide = ConstraintGuide(hmm, dfa, horizon=horizon, terminal=terminal)
        brute = RestBrute(hmm, micro, constraint, horizon, rest=rest_ids)
        for prefix in prefixes:
            _close(guide.log_prob(prefix).item(), brute.log_prob(prefix))
            _close(guide.next_log_probs(prefix).numpy(), brute.next_log_probs(prefix))


def test_the_rest_changes_which_span_the_guide_prefers(micro):
    """The same junction with different rests: P(span ends here | ...) must differ (else the HMM ignores the
    suffix), and the guide without a terminal vector equals one of ones."""
    constraint = with_affixes({"keywords": ["cat"]}, ".")
    dfa = compile_constraint(constraint, micro)
    hmm = HMM.random(4, len(micro), seed=2, eos_token_id=micro.eos_token_id)
    q = {}
    for rest_ids in ((2, 1), (3, 3, 3, 3, 3, 3)):
        terminal = terminal_vector(hmm, SuffixPlan(". x", ".", " x", rest_ids))
        q[rest_ids] = ConstraintGuide(hmm, dfa, horizon=3, terminal=terminal).next_log_probs([1]).numpy()
    assert not np.allclose(q[(2, 1)][7], q[(3, 3, 3, 3, 3, 3)][7])
    ones = ConstraintGuide(hmm, dfa, horizon=3, terminal=torch.zeros(4)).next_log_probs([1]).numpy()
    _close(ones, ConstraintGuide(hmm, dfa, horizon=3).next_log_probs([1]).numpy())


# ------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("beams", [1, 3])
def test_a_suffix_over_200_characters_is_served(tiny_lm, tokenizer, tiny_hmm, beams):
    """The quoted case: every real insertion suffix is over 200 characters (median 1,572), and pcgen refused
    them all (`suffix: longer than 200 characters`)."""
    suffix = long_suffix(1572)
    spec = {"all": [{"keywords": ["dog"]}, {"word_count": {"min": 2, "max": 12}}]}
    out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The cat", suffix=suffix, max_new_tokens=24,
                   num_beams=beams, hmm_context_tokens=2)  # fmt: skip
    junction = split_suffix(suffix)[0]
    for seq in out.sequences:
        assert seq.constraint_satisfied and check_text(spec, seq.text), seq.text
        assert seq.full_text == seq.text + suffix
        assert (
            decode_continuation(tokenizer, seq.token_ids) == seq.text + junction
        )  # only the junction generated
        assert len(seq.token_ids) <= 24 and seq.finish_reason == "eos"
    assert out.suffix == suffix and out.ranking == RANK_JUNCTION  # prompt + span + suffix > 128 positions
    assert all(s.full_text.endswith(suffix) for s in out.sequences)


def test_suffix_length_limit_names_the_field():
    DecodeParams(suffix="x" * MAX_SUFFIX_CHARS)
    with pytest.raises(DecodingError) as info:
        DecodeParams(suffix="x" * (MAX_SUFFIX_CHARS + 1))
    assert info.value.field == "suffix" and str(MAX_SUFFIX_CHARS) in info.value.message


def test_beams_are_ranked_by_span_plus_suffix_when_the_context_holds_it(tiny_lm, tokenizer, tiny_hmm):
    suffix = " the dog ran to the park and the cat sat."
    rest_ids = tokenizer.encode(split_suffix(suffix)[1], add_special_tokens=False)
    prompt = tokenizer.encode("The cat", add_special_tokens=False)
    out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["frisbee"]}, prompt=prompt, suffix=suffix,
                   max_new_tokens=16, num_beams=3, num_return_sequences=3)  # fmt: skip
    assert out.ranking == RANK_SUFFIX
    for seq in out.sequences:  # logprob: the LM's log-likelihood of span + junction + rest, one forward
        want = continuation_logprobs(tiny_lm, [prompt + seq.token_ids + rest_ids], [len(prompt)])[0]
        assert math.isclose(seq.logprob, want, rel_tol=1e-4, abs_tol=1e-3), (seq.logprob, want)
    keys = [s.logprob / (len(s.token_ids) + len(rest_ids)) for s in out.sequences]
    assert keys == sorted(keys, reverse=True)


def test_continuation_logprobs_of_padded_rows_equal_single_rows(tiny_lm):
    rows = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]
    batched = continuation_logprobs(tiny_lm, rows, [2, 1, 3])
    for row, start, got in zip(rows, [2, 1, 3], batched):
        assert math.isclose(got, continuation_logprobs(tiny_lm, [row], [start])[0], rel_tol=1e-5)


# ------------------------------------------------------------------------------------------ FIM


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory):
    """A byte-level BPE with StarCoder's FIM tokens, and a tiny GPT-2 and HMM over it."""
    from tiny_models import build_tiny_lm
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as tk_decoders
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("fim")
    (directory / "corpus.txt").write_text(corpus_text(), encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=[], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train([str(directory / "corpus.txt")], trainer)
    tok.add_special_tokens(["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    lm = build_tiny_lm(directory / "lm", fast)
    hmm = HMM.random(8, len(fast), seed=0, eos_token_id=fast.eos_token_id)
    return lm, fast, hmm


def test_an_lm_with_fim_tokens_gets_the_prompt_in_fim_form(fim_model):
    lm, tok, hmm = fim_model
    pre, suf, mid = fim_tokens(tok)
    suffix = " and the dog ran to the park."
    prompt = tok.encode("The cat", add_special_tokens=False)
    params = DecodeParams(max_new_tokens=12, num_beams=2, suffix=suffix)
    search = prepare(tok, hmm, {"keywords": ["dog"]}, prompt, params)
    decoder = BatchDecoder(lm)
    decoder.add(search)
    assert search.lm_input == [pre, *prompt, suf, *tok.encode(suffix, add_special_tokens=False), mid]
    while not search.done:
        decoder.step()
    assert search.error is None and search.output.ranking == RANK_FIM
    for seq in search.output.sequences:
        assert seq.constraint_satisfied and seq.full_text == seq.text + suffix
        assert not {pre, suf, mid} & set(seq.token_ids)


def test_an_lm_without_fim_tokens_gets_the_plain_prompt(tiny_lm, tokenizer, tiny_hmm):
    assert fim_tokens(tokenizer) is None
    prompt = tokenizer.encode("The cat", add_special_tokens=False)
    search = prepare(tokenizer, tiny_hmm, {"keywords": ["dog"]}, prompt, DecodeParams(suffix=" the end."))
    BatchDecoder(tiny_lm).add(search)
    assert search.lm_input == prompt and not search.fim
