"""Requests without a constraint on the OpenAI endpoints, served like an OpenAI / vLLM server would, against
`pcgen serve` in a subprocess (tiny GPT-2): through the same engine, batches and metrics as guided requests, with
no automaton and no guide, sampling the LM's own distribution; and vLLM's `return_tokens_as_token_ids`
(what a distillation client needs: temperature 1, top_p 1, the exact token ids)."""

from __future__ import annotations

import pytest
from response_text import metric_value
from server_processes import MAX_NEW_TOKENS

from pc_core.constraints import decode_continuation


@pytest.fixture(scope="module")
def chat_server(start_server, chat_lm_dir):
    """The tiny GPT-2 with a chat template on its tokenizer."""
    return start_server("chat-unconstrained", PCGEN_LM=str(chat_lm_dir))


def _ids(tokens: list[str]) -> list[int]:
    assert all(t.startswith("token_id:") for t in tokens), tokens
    return [int(t.removeprefix("token_id:")) for t in tokens]


def _lm_logprobs(lm, prompt_ids: list[int], ids: list[int]):
    """log p_lm(x | prompt, prefix) at each generated position, (len(ids), V), from one full forward."""
    import torch

    with torch.no_grad():
        logits = lm(torch.tensor([prompt_ids + ids])).logits[0].float()
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start : start + len(ids)], dim=-1)


def test_a_plain_openai_request_is_served_through_the_engine_without_a_guide(server):
    """The request of an OpenAI client that knows nothing of constraints: 200, counted in the same metrics,
    and no automaton compiled, no guide built (pcgen_dfa_states / pcgen_guide_precompute_seconds unchanged)."""
    before = server.metrics()
    with server.client() as http:
        sampled = http.post("/v1/completions", json={"prompt": "The", "max_tokens": 8, "temperature": 1,
                                                      "top_p": 1, "seed": 5, "n": 3})  # fmt: skip
        greedy = http.post("/v1/completions", json={"prompt": "The", "max_tokens": 6, "temperature": 0})
        streamed = http.post(
            "/v1/completions", json={"prompt": "A", "max_tokens": 5, "stream": True, "seed": 1}
        )
    for r in (sampled, greedy, streamed):
        assert r.status_code == 200, r.text
    assert len(sampled.json()["choices"]) == 3 and len(greedy.json()["choices"]) == 1
    for choice in sampled.json()["choices"] + greedy.json()["choices"]:
        assert choice["finish_reason"] in ("stop", "length") and choice["constraint_satisfied"] is True
    assert streamed.text.rstrip().endswith("data: [DONE]")
    usage = sampled.json()["usage"]["completion_tokens"] + greedy.json()["usage"]["completion_tokens"]
    assert 0 < usage <= 3 * 8 + 6
    after = server.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert delta("pcgen_constraint_outcomes_total", outcome="unconstrained") == 3 + 1 + 1
    assert delta("pcgen_generated_tokens_total") >= usage
    assert delta("pcgen_queue_time_seconds_count") == 3  # three engine jobs (a job per request)
    assert delta("pcgen_dfa_states_count") == 0 and delta("pcgen_guide_precompute_seconds_count") == 0


def test_unconstrained_sampling_is_the_lms_own_distribution_with_token_ids(server, tiny_lm, tokenizer):
    """temperature 1, top_p 1, logprobs with `return_tokens_as_token_ids`: the tokens are named by their ids,
    the ids decode to the text, and each logprob is the LM's own log-softmax (no HMM reweighting, no blocked
    tokens), recomputed here with the same LM."""
    body = {"prompt": "The dog", "max_tokens": MAX_NEW_TOKENS, "temperature": 1, "top_p": 1, "seed": 11,
            "n": 2, "logprobs": 3, "return_tokens_as_token_ids": True}  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    prompt_ids = tokenizer.encode("The dog", add_special_tokens=False)
    for choice in r.json()["choices"]:
        logprobs = choice["logprobs"]
        ids = _ids(logprobs["tokens"])
        assert decode_continuation(tokenizer, ids) == choice["text"]
        expected = _lm_logprobs(tiny_lm, prompt_ids, ids)
        for k, token in enumerate(ids):
            assert logprobs["token_logprobs"][k] == pytest.approx(float(expected[k, token]), abs=1e-4)
            top = logprobs["top_logprobs"][k]
            best = expected[k].topk(3).indices.tolist()
            assert set(_ids(list(top))) == set(best) | {token}
        if choice["finish_reason"] == "length":
            assert len(ids) == MAX_NEW_TOKENS


def test_stop_strings_end_unconstrained_text(server):
    """The same seed with and without a stop string: the stopped text is the unstopped one cut before the
    first occurrence, with finish_reason "stop"."""
    body = {"prompt": "The", "max_tokens": MAX_NEW_TOKENS, "temperature": 1, "seed": 3}
    with server.client() as http:
        free = http.post("/v1/completions", json=body).json()["choices"][0]
        stop = next(c for c in free["text"][1:] if c.isalnum())  # a character the text holds
        r = http.post("/v1/completions", json={**body, "stop": [stop]})
        assert r.status_code == 200, r.text
        cut = r.json()["choices"][0]
    assert cut["text"] == free["text"][: free["text"].index(stop)]
    assert cut["finish_reason"] == "stop"


def test_chat_without_a_constraint_with_token_ids(chat_server):
    with chat_server.client() as http:
        r = http.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6, "temperature": 1, "top_p": 1,
            "seed": 2, "logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True})  # fmt: skip
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == r.json()["usage"]["completion_tokens"]  # one entry per token id (no EOS)
    _ids([t["token"] for t in content])
    for t in content:
        assert bytes(t["bytes"]).decode() == t["token"]
        assert _ids([a["token"] for a in t["top_logprobs"]])


def test_a_suffix_without_a_constraint_is_infilled(server):
    """Infilling needs the guide: a suffix with no constraint is served under one that always holds."""
    with server.client() as http:
        r = http.post("/v1/completions", json={"prompt": "The", "suffix": " dog.", "max_tokens": MAX_NEW_TOKENS,
                                                "temperature": 0})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["constraint_satisfied"] is True


def test_a_vllm_clients_sampling_request_and_tokenizer_check(server, tokenizer):
    """What a distillation client sends a vLLM server: temperature 1, top_p 1, no penalties, vLLM's knobs set
    to off (top_k -1, min_p 0, repetition_penalty 1), token prompts, token ids back; and vLLM's /tokenize and
    /detokenize to check that its tokenizer is the server's. A knob that is on is a 400 naming it."""
    text = "The quick brown fox, 42 times: naïve café\n  indented"
    body = {"prompt": [tokenizer.eos_token_id], "max_tokens": 6, "n": 1, "temperature": 1.0, "top_p": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": 0, "return_tokens_as_token_ids": True,
            "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "seed": 0}  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/completions", json=body)
        refused = [http.post("/v1/completions", json={**body, name: value})
                   for name, value in (("top_k", 5), ("min_p", 0.1), ("repetition_penalty", 1.2))]  # fmt: skip
        tokenized = http.post("/tokenize", json={"prompt": text, "add_special_tokens": False})
        detokenized = http.post("/detokenize", json={"tokens": tokenized.json()["tokens"]})
        bad = http.post("/detokenize", json={"tokens": [len(tokenizer)]})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    ids = _ids(choice["logprobs"]["tokens"])
    assert decode_continuation(tokenizer, ids) == choice["text"]
    logprobs = choice["logprobs"]  # logprobs 0: each top_logprobs entry holds the chosen token alone
    assert logprobs["top_logprobs"] == [
        {t: lp} for t, lp in zip(logprobs["tokens"], logprobs["token_logprobs"])
    ]
    for (name, _), answer in zip((("top_k", 5), ("min_p", 0.1), ("repetition_penalty", 1.2)), refused):
        assert answer.status_code == 400 and answer.json()["error"]["param"] == name, answer.text
    assert tokenized.status_code == 200, tokenized.text
    assert tokenized.json()["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (
        tokenized.json()["count"] == len(tokenized.json()["tokens"])
        and tokenized.json()["max_model_len"] == 128
    )
    assert detokenized.json()["prompt"] == tokenizer.decode(tokenized.json()["tokens"])
    assert bad.status_code == 422 and bad.json()["error"]["path"] == "tokens", bad.text
