"""Sampling: shard format, EOS padding, determinism, the hidden states LVD reads, the sampler itself."""

import json

import numpy as np
import pytest
import torch

from distill import data
from distill.sample import SampleConfig, run_sample, sample_batch


def _cfg(tiny_lm, out, **kw):
    base = dict(lm=str(tiny_lm), out=str(out), num_sequences=40, seq_len=12, batch_size=8, shard_size=16)
    return SampleConfig(**{**base, **kw}, device="cpu")


def test_shards_manifest_and_hidden_states(tiny_lm, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from pc_core.constraints.vocab import tokenizer_fingerprint

    run_sample(_cfg(tiny_lm, tmp_path / "s", save_embeddings=20))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 3
    assert manifest["vocab_size"] == len(tokenizer) and manifest["eos_token_id"] == tokenizer.eos_token_id
    assert manifest["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert [e["num_sequences"] for e in manifest["shards"]] == [16, 16, 8]
    assert len({e["seed"] for e in manifest["shards"]}) == 3
    assert not list((tmp_path / "s").glob("manifest-rank-*"))  # merged into manifest.json at the end
    tokens, _ = data.load_tokens(tmp_path / "s")
    assert tokens.dtype == np.uint16 and tokens.shape == (40, 12)
    eos = tokenizer.eos_token_id
    for row in tokens:  # EOS padding: after the first EOS every token is EOS
        hits = np.flatnonzero(row == eos)
        if len(hits):
            assert (row[hits[0] :] == eos).all()
    # hidden states for the first 20 sequences only: 16 in shard 0, 4 in shard 1, none in shard 2
    assert [e["embeddings"] and e["embeddings"]["num_sequences"] for e in manifest["shards"]] == [16, 4, None]
    emb = data.Embedded(tmp_path / "s")
    assert emb.num_sequences == 20 and emb.dim == 32
    np.testing.assert_array_equal(emb.tokens, tokens[:20])
    # the stored state at position i is the last layer's state that predicts x_i: input [BOS, x_1 .. x_{i-1}]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    _, vectors = next(emb.chunks(4))
    for row in range(2):
        x = torch.tensor([[tokenizer.bos_token_id, *tokens[row, :-1].tolist()]])
        with torch.no_grad():
            ref = model(input_ids=x, output_hidden_states=True).hidden_states[-1][0]  # (T, D)
        stop = int(np.argmax(tokens[row] == eos)) if (tokens[row] == eos).any() else 12
        np.testing.assert_allclose(vectors[row, : stop + 1], ref[: stop + 1].numpy(), atol=2e-3)


def test_rerun_reproduces_and_batch_size_does_not_matter(tiny_lm, tmp_path):
    run_sample(_cfg(tiny_lm, tmp_path / "a"))
    run_sample(_cfg(tiny_lm, tmp_path / "b", batch_size=5))
    run_sample(_cfg(tiny_lm, tmp_path / "c", seed=1))
    a, b, c = (data.load_tokens(tmp_path / d)[0] for d in "abc")
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5  # another seed, other samples


def test_prompts_left_padding_and_cycling(tiny_lm, tokenizer, tmp_path):
    """Prompts of different lengths in one batch: each continuation is what the prompt alone gives."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The dog caught a frisbee in the\n\nA cat\n")
    cfg = _cfg(
        tiny_lm, tmp_path / "p", num_sequences=6, batch_size=6, prompts=str(prompts), save_embeddings=6
    )
    run_sample(cfg)
    tokens, manifest = data.load_tokens(tmp_path / "p")
    assert manifest["settings"]["prompts_sha256"]
    alone = _cfg(tiny_lm, tmp_path / "q", num_sequences=6, batch_size=1, prompts=str(prompts))
    run_sample(alone)  # batch of one: no padding at all
    np.testing.assert_array_equal(tokens, data.load_tokens(tmp_path / "q")[0])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    _, vectors = next(data.Embedded(tmp_path / "p").chunks(6))
    for row, text in enumerate(["The dog caught a frisbee in the", "A cat"] * 3):  # blank lines skipped
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            state = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(vectors[row, 0], state.numpy(), atol=2e-3)


def test_sampler_follows_the_lm_distribution(tiny_lm):
    """Temperature 1, full vocabulary: first-token frequencies match softmax(logits) (chi-square)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(16)  # a peaked distribution, so a few thousand draws suffice
        probs = torch.softmax(model(input_ids=torch.tensor([[0]])).logits[0, -1].double(), -1)
    n = 4000
    uniforms = torch.rand((n, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = []
    for start in range(0, n, 1000):
        x, _ = sample_batch(model, [[0]] * 1000, uniforms[start : start + 1000], probs.numel(), None, 0)
        got.append(x[:, 0])
    counts = torch.bincount(torch.cat(got), minlength=probs.numel()).double()
    top = probs.argsort(descending=True)[:8]
    assert float(probs[top].sum()) > 0.5 and float(probs[top[-1]]) * n > 20
    expected = torch.cat([probs[top] * n, (1 - probs[top].sum()).reshape(1) * n])
    observed = torch.cat([counts[top], (n - counts[top].sum()).reshape(1)])
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 27.9, (chi2, observed, expected)  # 8 degrees of freedom, p = 0.0005


def test_token_dtype():
    assert data.token_dtype(50257) == "uint16" and data.token_dtype(65535) == "uint16"
    assert data.token_dtype(65536) == "uint32" and data.token_dtype(152064) == "uint32"


@pytest.mark.parametrize("field,value", [("num_sequences", 0), ("seq_len", 0), ("save_embeddings", -1)])
def test_bad_sample_settings(tiny_lm, tmp_path, field, value):
    from distill.errors import DistillError

    with pytest.raises(DistillError, match=field):
        run_sample(_cfg(tiny_lm, tmp_path / "x", **{field: value}))
