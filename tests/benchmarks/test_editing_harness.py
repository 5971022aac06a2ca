"""The editing benchmark's pieces on tiny models: whole suffixes, interleaved categories, and log-likelihoods
scored in windows beyond the proxy LM's 64-token context."""

from __future__ import annotations

import json

import torch

from benchmarks.editing import CONTEXT, load_cases, log_likelihood, suffix_of


def _direct(lm, ids: list[int], start: int) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(lm(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)
    return float(logp[start - 1 :].gather(1, torch.tensor(ids[start:])[:, None]).sum())


def test_log_likelihood_within_the_context_is_one_forward(tiny_lm, tokenizer):
    prompt = tokenizer.encode("The dog ran", add_special_tokens=False)
    text = " to the park with the cat."
    got, n = log_likelihood(tiny_lm, tokenizer, prompt, text)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert n == len(ids) and abs(got - _direct(tiny_lm, prompt + ids, len(prompt))) < 1e-4


def test_log_likelihood_beyond_the_context_scores_every_token_once(tiny_lm, tokenizer):
    """Each token is scored once, after at least CONTEXT / 2 tokens (or all before it): the sum equals the
    per-token scores with those windows, token by token."""
    prompt = tokenizer.encode("The dog ran", add_special_tokens=False)
    text = " and the cat sat by the lake with the girl" * 12
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(prompt) + len(ids) > 2 * CONTEXT
    got, n = log_likelihood(tiny_lm, tokenizer, prompt, text)
    tokens = prompt + ids
    want, done = 0.0, len(prompt)
    while done < len(tokens):  # the windows, rebuilt here one token at a time
        end = min(len(tokens), max(done + CONTEXT // 2, CONTEXT))
        start = max(0, end - CONTEXT)
        for j in range(done, end):
            want += _direct(tiny_lm, tokens[start : j + 1], j - start)
        done = end
    assert n == len(ids) and abs(got - want) < 1e-3 * abs(want)


def test_cases_interleave_categories_and_keep_the_whole_suffix(tmp_path):
    rows = [
        {"id": f"{c}{i}", "category": c, "suffix": "x" * 900 if c.endswith("I1") else ""}
        for c in ("K0L0I0", "K0L0I1", "K1L1I1")
        for i in range(3)
    ]
    path = tmp_path / "editing.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cases = load_cases(path, None)
    assert [c["category"] for c in cases[:3]] == ["K0L0I0", "K0L0I1", "K1L1I1"] and len(cases) == 9
    assert suffix_of(rows[3], None) == " " + "x" * 900  # no truncation; a space before a word character
    assert suffix_of(rows[0], None) is None
    assert suffix_of({"suffix": "the cat sat. Then"}, 2) == " the cat"
