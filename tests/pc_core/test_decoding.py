"""Guided decoding with a tiny GPT-2 and a random HMM: every output satisfies its constraint."""

import random

import numpy as np
import pytest
import torch

from pc_core import check_ids
from pc_core.constraints.continuation import decode_continuation
from pc_core.decoding import BatchDecoder, generate, prepare
from pc_core.errors import TokenizerMismatch, UnsatisfiableConstraint
from pc_core.hmm import HMM
from pc_core.lm import KVBatch
from pc_core.params import DecodeParams, DecodingError

SINGLE = ["dog", "frisbee", "catch", "coffee", "building", "garden", "snow", "winter", "children", "lake", "house",
          "night", "team", "tree", "girl", "fish", "field", "sky", "stove", "city", "park", "couch", "cat", "pan",
          "jump", "early", "brown", "lazy"]  # fmt: skip
MULTI_TOKEN = ["vegetable", "tourist", "bird", "kitten", "climb", "read"]  # split into 2-4 tokens
PHRASES = ["New York", "brown fox", "cold winter"]


def keyword_sets(n=32, seed=0):
    rng = random.Random(seed)
    sets = []
    for i in range(n):
        k = 1 + i % 5
        words = rng.sample(SINGLE, k)
        if i % 3 == 0:
            words[0] = rng.choice(MULTI_TOKEN)
        if i % 7 == 0:
            words[-1] = rng.choice(PHRASES)
        sets.append(list(dict.fromkeys(words)))
    return sets


def _check_outputs(out, tokenizer, spec, max_new_tokens, expected):
    assert len(out.sequences) == expected
    for seq in out.sequences:
        assert len(seq.token_ids) <= max_new_tokens
        assert seq.constraint_satisfied
        assert check_ids(spec, tokenizer, seq.token_ids), seq.text  # independent re-check
        assert seq.finish_reason in ("eos", "length")
        assert np.isfinite(seq.logprob)


@pytest.mark.parametrize("index", range(32))
def test_every_output_satisfies_its_constraint(tiny_lm, tokenizer, tiny_hmm, index):
    words = keyword_sets()[index]
    spec = {"keywords": words}
    max_new = 6 + 5 * len(words)
    beam = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="The", max_new_tokens=max_new,
                    num_beams=3, num_return_sequences=2)  # fmt: skip
    _check_outputs(beam, tokenizer, spec, max_new, 2)
    sample = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="A", max_new_tokens=max_new, do_sample=True,
                      num_return_sequences=2, top_p=0.9, temperature=0.8, seed=index)  # fmt: skip
    _check_outputs(sample, tokenizer, spec, max_new, 2)
    assert set(beam.timings) == {"dfa_ms", "precompute_ms", "decode_ms"}


@pytest.mark.parametrize(
    "spec",
    [
        {"word_at": 3, "word": "pan"},
        {"all": [{"word_at": 3, "word": "pan"}, {"word_at": 5, "word": "stove"}]},
        {"all": ["dog", {"forbidden": ["cat", "the"]}]},
        {"ordered": ["dog", "park"]},
        {"all": [{"word_count": {"min": 4, "max": 6}}, "snow"]},
        {"any": ["lake", {"keyword": "New York", "case_sensitive": True, "inflections": False}]},
    ],
)
def test_other_constraint_kinds(tiny_lm, tokenizer, tiny_hmm, spec):
    for kwargs in ({"num_beams": 4}, {"do_sample": True, "seed": 3, "num_return_sequences": 3}):
        out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt="", max_new_tokens=14, **kwargs)
        _check_outputs(out, tokenizer, spec, 14, kwargs.get("num_return_sequences", 1))


def test_min_new_tokens_and_eos(tiny_lm, tokenizer, tiny_hmm):
    out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, max_new_tokens=12, min_new_tokens=8,
                   do_sample=True, num_return_sequences=4, seed=0)  # fmt: skip
    for seq in out.sequences:
        assert len(seq.token_ids) >= 8 or seq.finish_reason == "length"
        assert seq.constraint_satisfied


def test_unsatisfiable_fails_fast(tiny_lm, tokenizer, tiny_hmm):
    words = ["celebrated", "building", "vegetable", "children", "tourist"]
    with pytest.raises(UnsatisfiableConstraint) as info:  # found before decoding: the message says why
        generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": words}, max_new_tokens=3)
    assert "max_new_tokens=3" in str(info.value) and info.value.path == "constraint"
    with pytest.raises(UnsatisfiableConstraint, match="no text satisfies"):
        generate(tiny_lm, tokenizer, tiny_hmm, {"all": ["dog", {"not": "dog"}]}, max_new_tokens=5)


def test_seeded_sampling_is_reproducible(tiny_lm, tokenizer, tiny_hmm):
    spec = {"keywords": ["dog", "park"]}
    run = lambda seed: [s.token_ids for s in generate(tiny_lm, tokenizer, tiny_hmm, spec, max_new_tokens=12,
                                                       do_sample=True, num_return_sequences=3, seed=seed).sequences]  # fmt: skip
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_batched_mixed_requests_equal_individual_runs(tiny_lm, tokenizer, tiny_hmm):
    jobs = [
        ({"keywords": ["dog", "frisbee"]}, "The", DecodeParams(max_new_tokens=12, num_beams=3)),
        (
            {"word_at": 2, "word": "cat"},
            "A long prompt about the garden and the house",
            DecodeParams(max_new_tokens=8, do_sample=True, num_return_sequences=2, seed=5),
        ),  # noqa: E501
        ({"forbidden": ["the"]}, "", DecodeParams(max_new_tokens=6, num_beams=2, num_return_sequences=2)),
        (
            {"keywords": ["snow"]},
            "Winter",
            DecodeParams(max_new_tokens=10, do_sample=True, seed=11, top_p=0.8),
        ),
    ]
    alone = []
    for spec, prompt, params in jobs:
        decoder = BatchDecoder(tiny_lm)
        request = prepare(tokenizer, tiny_hmm, spec, prompt, params)
        decoder.add(request)
        while not request.done:
            decoder.step()
        alone.append([s.token_ids for s in request.output.sequences])
    decoder = BatchDecoder(tiny_lm)
    requests = [prepare(tokenizer, tiny_hmm, spec, prompt, params) for spec, prompt, params in jobs]
    decoder.add(requests[0])
    decoder.add(requests[1])
    max_rows = 0
    for step in range(100):
        if step == 2:
            decoder.add(requests[2])  # joins mid-flight: continuous batching
        if step == 5:
            decoder.add(requests[3])
        max_rows = max(max_rows, decoder.rows)
        decoder.step()
        if all(r.done for r in requests):
            break
    assert max_rows > 4
    assert [[s.token_ids for s in r.output.sequences] for r in requests] == alone


def test_cancel_drops_only_that_request(tiny_lm, tokenizer, tiny_hmm):
    decoder = BatchDecoder(tiny_lm)
    a = prepare(
        tokenizer, tiny_hmm, {"keywords": ["dog"]}, "The", DecodeParams(max_new_tokens=10, num_beams=2)
    )
    b = prepare(tokenizer, tiny_hmm, {"keywords": ["cat"]}, "A", DecodeParams(max_new_tokens=10, num_beams=2))
    decoder.add(a)
    decoder.add(b)
    decoder.step()
    decoder.cancel(a)
    while not b.done:
        decoder.step()
    assert not a.done and b.output.sequences[0].constraint_satisfied
    assert decoder.rows == 0


def test_streaming_reassembles_the_output(tiny_lm, tokenizer, tiny_hmm):
    for kwargs in ({"num_beams": 3}, {"do_sample": True, "seed": 1, "num_return_sequences": 2}):
        events = []
        out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog", "park"]}, prompt="The", max_new_tokens=14,
                       on_stream=events.append, **kwargs)  # fmt: skip
        assert events
        for index, seq in enumerate(out.sequences):
            assert "".join(e.text for e in events if e.index == index) == seq.text


def test_bad_parameters(tiny_lm, tokenizer, tiny_hmm):
    spec = {"keywords": ["dog"]}
    for kwargs in ({"max_new_tokens": 0}, {"num_return_sequences": 3, "num_beams": 2}, {"temperature": 0},
                   {"top_p": 0}, {"do_sample": True, "num_beams": 2}, {"min_new_tokens": 40}, {"hmm_weight": -1}):  # fmt: skip
        with pytest.raises(DecodingError):
            generate(tiny_lm, tokenizer, tiny_hmm, spec, **kwargs)
    wrong = HMM.random(4, len(tokenizer) + 1, seed=0)
    with pytest.raises(TokenizerMismatch, match="tokens but the HMM"):
        generate(tiny_lm, tokenizer, wrong, spec)


def test_guided_distribution_is_normalised_product(tmp_path):
    """One step on a 14-token vocabulary: p(x) = p_lm(x) q(x) / Z, with q enumerated by brute force."""
    from brute_force_guide import Brute
    from tiny_models import build_micro_tokenizer, build_tiny_lm

    micro = build_micro_tokenizer(tmp_path / "tok")
    lm = build_tiny_lm(tmp_path / "lm", micro)
    hmm = HMM.random(3, len(micro), seed=2, eos_token_id=micro.eos_token_id)
    spec = {"keywords": ["dog", "cat"]}
    for weight in (1.0, 0.5):
        params = DecodeParams(max_new_tokens=3, do_sample=True, seed=0, hmm_weight=weight,
                              guide_emission_dtype="float32")  # to 1e-4; bfloat16: test_emission_dtype  # fmt: skip
        request = prepare(micro, hmm, spec, [2, 4], params)
        _, logits = KVBatch.prefill(lm, request.lm_input)
        q = request.guide.next_log_probs(request.guide_state)
        got = request.next_distribution(torch.log_softmax(logits, -1), q)[0].double().exp().numpy()
        with torch.no_grad():
            p_lm = torch.softmax(lm(torch.tensor([[2, 4]])).logits[0, -1].double(), -1).numpy()
        q_brute = np.exp(Brute(hmm, micro, spec, 3).next_log_probs([]))
        want = p_lm * q_brute**weight
        want /= want.sum()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
        assert ((got == 0) == (q_brute == 0)).all()


def test_a_failing_request_does_not_take_its_batch_down(tiny_lm, tokenizer, tiny_hmm):
    decoder = BatchDecoder(tiny_lm)
    good = prepare(
        tokenizer, tiny_hmm, {"keywords": ["dog"]}, "The", DecodeParams(max_new_tokens=8, num_beams=2)
    )
    bad = prepare(
        tokenizer, tiny_hmm, {"keywords": ["cat"]}, "A", DecodeParams(max_new_tokens=8, num_beams=2)
    )
    decoder.add(good)
    decoder.add(bad)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    bad.choose = broken
    finished = decoder.step()
    assert finished == [bad] and isinstance(bad.error, RuntimeError) and bad.output is None
    while not good.done:
        decoder.step()
    assert good.error is None and good.output.sequences[0].constraint_satisfied


def test_extreme_sampling_parameters(tiny_lm, tokenizer, tiny_hmm):
    with pytest.raises(DecodingError, match="temperature"):
        generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, do_sample=True, temperature=5e-324)
    out = generate(tiny_lm, tokenizer, tiny_hmm, {"keywords": ["dog"]}, max_new_tokens=6, do_sample=True,
                   top_p=1e-12, temperature=1e-3, seed=0)  # fmt: skip
    assert out.sequences[0].constraint_satisfied  # top_p below float32 resolution keeps the best token


def _random_constraint(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return {"keywords": rng.sample(SINGLE, rng.randint(1, 2))}
    if kind == 1:
        low = rng.randint(0, 3)
        return {"word_count": {"min": low, "max": low + rng.randint(1, 6)}}
    if kind == 2:
        return {"all": [rng.choice(SINGLE), {"forbidden": rng.sample(SINGLE, 2)}]}
    if kind == 3:
        return {"word_at": rng.randint(1, 3), "word": rng.choice(SINGLE)}
    return {"not": {"keywords": rng.sample(SINGLE, 3)}}  # almost free: the LM's own choices decide


def test_generated_text_is_always_valid_text(tiny_lm, tokenizer, tiny_hmm):
    """No output ever contains U+FFFD and every token boundary is a character boundary: tokens that end
    inside a UTF-8 character or decode to U+FFFD get probability zero (docs/method.md §3). The test
    tokenizer is byte-level with ~150 such tokens of ~640 and the LM is random, so without the ban almost
    every sampled text here would have one; prompts with multi-byte characters are included."""
    rng = random.Random(19)
    prompts = ["The", "", "Ж😀", "日本 café €", "A dog"]
    checked = 0
    for case in range(16):
        spec = _random_constraint(rng)
        out = generate(tiny_lm, tokenizer, tiny_hmm, spec, prompt=prompts[case % len(prompts)], max_new_tokens=16,
                       do_sample=True, temperature=1.5, num_return_sequences=4, seed=case)  # fmt: skip
        for seq in out.sequences:
            ids = [t for t in seq.token_ids if t != tokenizer.eos_token_id]
            texts = [
                seq.text,
                seq.full_text,
                *(decode_continuation(tokenizer, ids[:i]) for i in range(1, len(ids) + 1)),
            ]
            assert not [text for text in texts if "\ufffd" in text], (spec, seq.text)
            assert seq.constraint_satisfied and check_ids(spec, tokenizer, seq.token_ids), (spec, seq.text)
            checked += len(texts)
    assert checked > 300
