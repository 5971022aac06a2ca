"""pc_core.lm and guided decoding on causal LMs of several families (GPT-2, Llama, Qwen2), tiny and local:
loading, the shared left-padded KV cache that batches mixed requests, the context length, and generation
whose every output satisfies its constraint."""

from __future__ import annotations

import asyncio
import warnings

import pytest
import torch
from model_families import FAMILIES, MAX_POSITIONS, build_family_lm

from pc_core import check_ids
from pc_core.decoding import DecodeParams, generate
from pc_core.hmm import HMM
from pc_core.lm import KVBatch, load_lm, max_positions

PROMPTS = ["The dog caught a frisbee in the park.", "A cat", "Rain falls on the roof"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, directory, model, tokenizer) of one family, loaded by path with load_lm."""
    directory = build_family_lm(request.param, tmp_path_factory.mktemp(request.param))
    model, tokenizer = load_lm(str(directory), device="cpu")
    return request.param, directory, model, tokenizer


@pytest.fixture(scope="module")
def hmm(family):
    _, _, _, tokenizer = family
    return HMM.random(16, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)


@pytest.fixture(autouse=True)
def no_future_warnings():
    """transformers' deprecations (e.g. `past_key_values`) fail the test instead of printing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield


def _ids(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _full_logits(model, ids):
    """The last-position logits of a plain forward of the whole sequence, no cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_load_lm(family):
    name, _, model, tokenizer = family
    expected = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    assert type(model).__name__ == expected[name]
    assert not model.training and next(model.parameters()).dtype == torch.float32  # auto on CPU
    assert model.config.vocab_size == len(tokenizer) and tokenizer.eos_token_id is not None
    assert max_positions(model) == MAX_POSITIONS == max_positions(model.config)


def test_mixed_batch_equals_plain_forwards(family):
    """Prompts of different lengths prefilled one by one, concatenated (left padding), reordered and
    duplicated by select, stepped, joined by a newcomer mid-way, stepped again: every row's logits equal a
    plain forward of its whole token sequence."""
    _, _, model, tokenizer = family
    prompts = [_ids(tokenizer, text) for text in PROMPTS]
    assert len({len(p) for p in prompts}) == 3
    prefilled = [KVBatch.prefill(model, p) for p in prompts]
    for p, (_, logits) in zip(prompts, prefilled):
        torch.testing.assert_close(logits[0], _full_logits(model, p), atol=1e-4, rtol=1e-4)

    kv = KVBatch.concat([prefilled[0][0], prefilled[1][0]])
    assert kv.rows == 2 and kv.mask.shape[1] == len(prompts[0]) and int(kv.mask[1].sum()) == len(prompts[1])
    rows = [prompts[1], prompts[0], prompts[1]]  # reordered and duplicated
    kv = kv.select(torch.tensor([1, 0, 1]))
    first = [11, 12, 13]
    kv, logits = kv.forward(model, torch.tensor(first))
    seqs = [r + [t] for r, t in zip(rows, first)]
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], _full_logits(model, seq), atol=1e-4, rtol=1e-4)

    # drop the first row (the padding columns that only it needed stay), add the third prompt, step again
    kv = KVBatch.concat([kv.select(torch.tensor([1, 2])), prefilled[2][0]])
    seqs = [seqs[1], seqs[2], prompts[2]]
    second = [21, 22, 23]
    kv, logits = kv.forward(model, torch.tensor(second))
    assert kv.positions.tolist() == [len(s) + 1 for s in seqs]
    for row, (seq, token) in enumerate(zip(seqs, second)):
        torch.testing.assert_close(logits[row], _full_logits(model, seq + [token]), atol=1e-4, rtol=1e-4)

    # select trims columns no remaining row needs: only the short prompt's row is left
    short = kv.select(torch.tensor([1]))
    assert short.mask.shape[1] == len(seqs[1]) + 1 and bool(short.mask.all())


def test_decoding_up_to_the_context_length(family):
    """A prompt that fills the context but for the new tokens: the last position is max_positions - 1."""
    _, _, model, tokenizer = family
    limit = max_positions(model)
    text = " ".join(["the dog"] * limit)
    prompt = _ids(tokenizer, text)[: limit - 3]
    kv, _ = KVBatch.prefill(model, prompt)
    seq = list(prompt)
    for token in (5, 6, 7):
        kv, logits = kv.forward(model, torch.tensor([token]))
        seq.append(token)
    assert len(seq) == limit and int(kv.positions[0]) == limit
    torch.testing.assert_close(logits[0], _full_logits(model, seq), atol=1e-4, rtol=1e-4)


def test_the_engine_checks_the_context_from_the_config(family, hmm):
    """The service refuses prompt + max_new_tokens beyond the context read from the config, and batches
    requests with prompts of different lengths."""
    from pc_core.constraints import parse_constraint
    from service.engine import Engine, GenerationSpec
    from service.errors import ServiceError
    from service.metrics import Metrics

    _, _, model, tokenizer = family
    engine = Engine(model, tokenizer, hmm, Metrics(), max_batch_size=4, max_positions=max_positions(model))
    engine.start()

    def spec(prompt, word, **kw):
        return GenerationSpec(prompt, parse_constraint({"keywords": [word]}), DecodeParams(**kw))

    async def run():
        long_prompt = " ".join(["the dog"] * MAX_POSITIONS)
        with pytest.raises(ServiceError) as info:
            await engine.submit(spec(long_prompt, "cat", max_new_tokens=8))
        jobs = [
            await engine.submit(spec(prompt, word, max_new_tokens=12, num_beams=2))
            for prompt, word in zip(PROMPTS, ("cat", "park", "roof"))
        ]
        return info.value, await asyncio.gather(*(j.future for j in jobs))

    try:
        error, outputs = asyncio.run(run())
    finally:
        engine.stop()
    assert error.error_type == "context_length_exceeded" and str(MAX_POSITIONS) in str(error)
    for word, out in zip(("cat", "park", "roof"), outputs):
        for seq in out.sequences:
            assert check_ids({"keywords": [word]}, tokenizer, seq.token_ids), seq.text


@pytest.mark.parametrize("words", [["dog"], ["frisbee", "park"]])
def test_generate_beam_search_and_sampling(family, hmm, words):
    _, _, model, tokenizer = family
    spec = {"keywords": words}
    beam = generate(model, tokenizer, hmm, spec, prompt="The", max_new_tokens=16, num_beams=3,
                    num_return_sequences=2)  # fmt: skip
    sample = generate(model, tokenizer, hmm, spec, prompt="A", max_new_tokens=16, do_sample=True,
                      num_return_sequences=3, seed=7)  # fmt: skip
    unprompted = generate(model, tokenizer, hmm, spec, max_new_tokens=16, num_beams=2)  # starts from BOS
    for out, n in ((beam, 2), (sample, 3), (unprompted, 1)):
        assert len(out.sequences) == n
        for seq in out.sequences:
            assert len(seq.token_ids) <= 16 and seq.constraint_satisfied
            assert check_ids(spec, tokenizer, seq.token_ids), seq.text
    again = generate(model, tokenizer, hmm, spec, prompt="A", max_new_tokens=16, do_sample=True,
                     num_return_sequences=3, seed=7)  # fmt: skip
    assert [s.token_ids for s in again.sequences] == [s.token_ids for s in sample.sequences]
