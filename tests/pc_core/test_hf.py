"""pc_core.hf.ConstraintLogitsProcessor: the exact guide inside transformers' model.generate (beam search and
sampling, several prompts, finished rows), and its scores against pc_core.decoding's own distribution."""

import pytest
import torch
from transformers import LogitsProcessorList

from pc_core import check_ids
from pc_core.decoding import prepare
from pc_core.errors import UnsatisfiableConstraint
from pc_core.hf import ConstraintLogitsProcessor
from pc_core.params import DecodeParams

CONSTRAINT = {"keywords": ["dog", "park"]}
HORIZON = 12


def _left_padded(tokenizer, prompts):
    """input_ids and attention_mask of prompts left-padded with EOS (what a left-padding tokenizer gives)."""
    rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tokenizer.eos_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _generate(model, tokenizer, hmm, prompts, before=(), **kwargs):
    ids, mask = _left_padded(tokenizer, prompts)
    processor = ConstraintLogitsProcessor(hmm, tokenizer, CONSTRAINT, ids.shape[1], HORIZON)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=HORIZON, pad_token_id=tokenizer.eos_token_id,
                         logits_processor=LogitsProcessorList([*before, processor]), **kwargs)  # fmt: skip
    return [row[ids.shape[1] :].tolist() for row in out]


def likes_to_end(eos):
    """A processor before the guide: the LM wants EOS, so rows end as soon as the guide allows it."""

    def boost(input_ids, scores):
        scores[:, eos] += 6.0
        return scores

    return boost


def test_beam_search_outputs_satisfy_the_constraint(tiny_lm, tokenizer, tiny_hmm):
    for before in ((), (likes_to_end(tokenizer.eos_token_id),)):
        outputs = _generate(tiny_lm, tokenizer, tiny_hmm, ["The", "A man in the"], before, num_beams=4,
                            num_return_sequences=2, do_sample=False)  # fmt: skip
        assert len(outputs) == 4
        for new_ids in outputs:
            assert check_ids(CONSTRAINT, tokenizer, new_ids), tokenizer.decode(new_ids)
    assert any(tokenizer.eos_token_id in new_ids for new_ids in outputs)
    plain = tiny_lm.generate(torch.tensor([tokenizer.encode("The")]), max_new_tokens=HORIZON, num_beams=4,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    assert not check_ids(CONSTRAINT, tokenizer, plain[0, 1:].tolist())  # the guide, not the LM, says them


def test_sampling_outputs_satisfy_the_constraint(tiny_lm, tokenizer, tiny_hmm):
    eos = tokenizer.eos_token_id
    for before in ((), (likes_to_end(eos),)):  # with it, rows end early and are padded after EOS
        torch.manual_seed(1)
        outputs = _generate(tiny_lm, tokenizer, tiny_hmm, ["The", "A man in the"], before, do_sample=True,
                            top_p=0.9, num_return_sequences=4)  # fmt: skip
        assert len(outputs) == 8 and len({tuple(o) for o in outputs}) > 1
        for new_ids in outputs:
            assert check_ids(CONSTRAINT, tokenizer, new_ids), tokenizer.decode(new_ids)
    assert any(eos in new_ids[: HORIZON - 1] for new_ids in outputs)  # finished rows went through generate


def test_scores_are_the_decoders_guided_distribution(tokenizer, tiny_hmm):
    """A step's scores equal GuidedSearch.next_distribution(lm_logp, q) for each row's own prefix, with rows
    reordered and duplicated between calls (beam search), a finished row, and a processor that first sees
    the generation mid-way."""
    weight, prompt = 0.7, tokenizer.encode("The dog", add_special_tokens=False)
    params = DecodeParams(max_new_tokens=HORIZON, hmm_weight=weight)
    search = prepare(tokenizer, tiny_hmm, CONSTRAINT, prompt, params)
    processor = ConstraintLogitsProcessor(tiny_hmm, tokenizer, CONSTRAINT, len(prompt), HORIZON, weight)
    gen = torch.Generator().manual_seed(0)
    eos = tokenizer.eos_token_id

    def check(proc, prefixes):
        input_ids = torch.tensor([prompt + p for p in prefixes])
        lm_logp = torch.log_softmax(torch.randn(len(prefixes), len(tokenizer), generator=gen), -1)
        got = proc(input_ids, lm_logp.clone())
        for row, prefix in enumerate(prefixes):
            if eos in prefix:
                assert torch.isfinite(got[row]).nonzero().flatten().tolist() == [eos]
                continue
            q = search.guide.next_log_probs(search.guide.state_for(prefix))  # (1, V)
            want = search.next_distribution(lm_logp[row : row + 1], q)[0]
            assert torch.equal(torch.isneginf(got[row]), torch.isneginf(want))
            finite = torch.isfinite(want)
            torch.testing.assert_close(got[row][finite], want[finite], atol=1e-5, rtol=1e-5)
        return got

    first = check(processor, [[], [], []])  # beams start as copies of the prompt
    a, b, c = first[0].topk(3).indices.tolist()  # possible first tokens
    second = check(processor, [[a], [b], [c]])
    x, y = second[1].topk(2).indices.tolist()
    z = int(second[0].argmax())
    rebuilt = []
    processor._rebuild = lambda prefixes: rebuilt.append(prefixes)  # the previous step's states must do
    third = [[b, x], [a, z], [b, y], [c, eos]]
    check(processor, third)
    assert rebuilt == []
    fresh = ConstraintLogitsProcessor(tiny_hmm, tokenizer, CONSTRAINT, len(prompt), HORIZON, weight)
    check(fresh, third)  # joins mid-generation: the states are built from the start


def test_an_unsatisfiable_constraint_fails_when_built(tokenizer, tiny_hmm):
    with pytest.raises(UnsatisfiableConstraint, match="max_new_tokens=1"):
        ConstraintLogitsProcessor(tiny_hmm, tokenizer, {"keywords": ["dog", "park", "frisbee"]}, 0, 1)
