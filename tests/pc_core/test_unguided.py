"""Decoding with no constraint (pc_core.unguided): the LM's own distribution, batched with guided searches."""

from __future__ import annotations

import pytest
import torch

from pc_core.constraints import decode_continuation
from pc_core.decoding import BatchDecoder, prepare
from pc_core.params import DecodeParams, DecodingError
from pc_core.unguided import prepare_unguided


def _run(lm, searches, join_at: dict | None = None) -> None:
    decoder = BatchDecoder(lm)
    join_at = join_at or {}
    for search in searches:
        if search not in join_at.values():
            decoder.add(search)
    for step in range(200):
        if step in join_at:
            decoder.add(join_at[step])
        decoder.step()
        if all(s.done for s in searches):
            return
    raise AssertionError("did not finish")


def _unguided(tokenizer, prompt: str, **fields):
    return prepare_unguided(tokenizer, prompt, DecodeParams(**fields))


def test_unguided_rows_batch_with_guided_ones_and_give_the_same_outputs(tiny_lm, tokenizer, tiny_hmm):
    """Unguided and guided searches in one batch (joining mid-flight) give what each gives alone."""

    def jobs():
        return [
            _unguided(tokenizer, "The", max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=4),
            prepare(
                tokenizer, tiny_hmm, {"keywords": ["dog"]}, "A", DecodeParams(max_new_tokens=10, num_beams=2)
            ),
            _unguided(tokenizer, "Winter", max_new_tokens=8, num_beams=3, num_return_sequences=2),
            _unguided(tokenizer, "", max_new_tokens=6, do_sample=True, seed=9, top_p=0.7, temperature=0.8),
        ]

    alone = []
    for search in jobs():
        _run(tiny_lm, [search])
        alone.append([s.token_ids for s in search.output.sequences])
    together = jobs()
    _run(tiny_lm, together, join_at={2: together[2], 3: together[3]})
    assert [[s.token_ids for s in r.output.sequences] for r in together] == alone
    assert together[1].output.sequences[0].constraint_satisfied
    assert together[0].output.dfa_states is None and together[1].output.dfa_states > 0


def test_greedy_is_the_lms_argmax_and_logprobs_are_the_lms(tiny_lm, tokenizer):
    search = _unguided(tokenizer, "The dog", max_new_tokens=8, min_new_tokens=8, logprobs=2)
    _run(tiny_lm, [search])
    seq = search.output.sequences[0]
    prompt = tokenizer.encode("The dog", add_special_tokens=False)
    with torch.no_grad():
        logits = tiny_lm(torch.tensor([prompt + seq.token_ids])).logits[0]
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), -1)  # (8, V)
    eos = tokenizer.eos_token_id
    for k, (token, logprob, top) in enumerate(seq.logprobs):
        expected = logp[k].clone()
        expected[eos] = float("-inf")  # min_new_tokens keeps EOS out, renormalised
        expected = expected - torch.logsumexp(expected, -1)
        assert token == int(expected.argmax()) == top[0][0]
        assert logprob == pytest.approx(float(expected[token]), abs=1e-4)
    assert len(seq.token_ids) == 8 and seq.finish_reason == "length"
    assert seq.text == decode_continuation(tokenizer, seq.token_ids)


def test_stop_strings_and_refusals(tiny_lm, tokenizer):
    free = _unguided(tokenizer, "The", max_new_tokens=12, do_sample=True, seed=3)
    _run(tiny_lm, [free])
    text = free.output.sequences[0].text
    stop = next(c for c in text[1:] if c.isalnum())
    cut = _unguided(tokenizer, "The", max_new_tokens=12, do_sample=True, seed=3, stop=(stop,))
    _run(tiny_lm, [cut])
    seq = cut.output.sequences[0]
    assert seq.text == text[: text.index(stop)] and seq.finish_reason == "stop"
    with pytest.raises(DecodingError) as info:
        _unguided(tokenizer, "The", suffix=" end.")
    assert info.value.field == "suffix"
    with pytest.raises(DecodingError) as info:
        _unguided(tokenizer, "The", logit_bias=((len(tokenizer), 1.0),))
    assert info.value.field == "logit_bias"
    banned = [t for t in range(len(tokenizer)) if t != tokenizer.eos_token_id][:50]
    search = _unguided(tokenizer, "The", max_new_tokens=12, do_sample=True, seed=5, num_return_sequences=4,
                       logit_bias=tuple((t, -100.0) for t in banned))  # fmt: skip
    _run(tiny_lm, [search])
    assert not set(banned) & {t for s in search.output.sequences for t in s.token_ids}
