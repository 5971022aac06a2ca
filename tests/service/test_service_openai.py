"""The OpenAI endpoint family against `pcgen serve` in a subprocess (tiny GPT-2, H=16 HMM), called with the
real `openai` client: completions and chat, their constraint fields, logprobs of the guided distribution,
echo, token and batched prompts, logit_bias (a -100 ban is exact), penalties, suffix and stop, streaming, and
OpenAI's error shape (400 with `param` naming the body field)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from response_text import sse_events
from server_processes import MAX_NEW_TOKENS

openai = pytest.importorskip("openai")

ROOT = Path(__file__).resolve().parents[2]
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def chat_server(start_server, chat_lm_dir):
    """A server whose model can chat, with room for the documentation's 32-token examples."""
    return start_server("chat", PCGEN_LM=str(chat_lm_dir), PCGEN_MAX_NEW_TOKENS="32")


def _client(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120, **kwargs)


def _model(server) -> str:
    return _client(server).models.list().data[0].id


def _bad_request(call) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    assert set(info.value.body) >= ERROR_KEYS and info.value.body["type"] == "invalid_request_error"
    return info.value


# ---------------------------------------------------------------------------------------------- completions


def test_completions_follow_the_constraint(server, tokenizer):
    client = _client(server)
    model = _model(server)
    out = client.completions.create(model=model, prompt="The", max_tokens=10, temperature=0, n=2,
                                    extra_body={"keywords": ["dog"]})  # fmt: skip
    assert out.object == "text_completion" and out.model == model and out.id.startswith("cmpl-")
    assert [c.index for c in out.choices] == [0, 1]
    for c in out.choices:
        assert c.finish_reason in ("stop", "length") and c.logprobs is None
        assert c.constraint_satisfied and "dog" in c.text.lower()
    u = out.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens > 0

    body = {"prompt": "A", "constraint": {"keywords": ["cat"]}, "max_tokens": 10, "n": 2, "seed": 5,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [data for _, data in sse_events(r.text)]
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    texts, finished = {0: "", 1: ""}, {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            finished[choice["index"]] = choice
    assert set(finished) == {0, 1} and all(f["constraint_satisfied"] for f in finished.values())
    assert all("cat" in t.lower() for t in texts.values())


def test_logprobs_are_those_of_the_guided_distribution(server):
    client = _client(server)
    # greedy (temperature 0, one beam): each chosen token is the guided distribution's most likely one
    out = client.completions.create(model=_model(server), prompt="The", max_tokens=8, temperature=0, logprobs=3,
                                    extra_body={"keywords": ["park"]})  # fmt: skip
    (choice,) = out.choices
    lp = choice.logprobs
    assert choice.constraint_satisfied and "".join(lp.tokens) == choice.text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == out.usage.completion_tokens
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and top[token] == logprob and len(top) <= 4  # the top 3, and the chosen one
        assert logprob == pytest.approx(max(top.values()))
    # sampling and streaming: the logprobs arrive with each choice's last chunk
    body = {"prompt": "A", "keywords": ["snow"], "max_tokens": 8, "n": 2, "seed": 1, "logprobs": 0,
            "stream": True}  # fmt: skip
    with server.client() as http:
        chunks = [d for _, d in sse_events(http.post("/v1/completions", json=body).text) if d != "[DONE]"]
    texts = {0: "", 1: ""}
    for c in chunks:
        (choice,) = c["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"] is not None:
            assert "".join(choice["logprobs"]["tokens"]) == texts[choice["index"]]
            assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"])  # logprobs 0: the chosen


def test_echo_token_prompts_and_lists_of_prompts(server, tokenizer):
    client = _client(server)
    out = client.completions.create(model=_model(server), prompt="The dog", max_tokens=6, temperature=0,
                                    echo=True, extra_body={"keywords": ["park"]})  # fmt: skip
    assert out.choices[0].text.startswith("The dog") and "park" in out.choices[0].text[len("The dog") :]

    ids = tokenizer.encode("The cat sat")
    out = client.completions.create(model=_model(server), prompt=ids, max_tokens=6, temperature=0, echo=True,
                                    extra_body={"keywords": ["couch"]})  # fmt: skip
    assert out.usage.prompt_tokens == len(ids) and out.choices[0].text.startswith("The cat sat")

    # a list of prompts: n choices per prompt, index = prompt * n + choice, computed together
    prompts = ["The", "A girl", "Birds"]
    out = client.completions.create(model=_model(server), prompt=prompts, max_tokens=8, n=2, temperature=0,
                                    extra_body={"keywords": ["tree"]})  # fmt: skip
    assert [c.index for c in out.choices] == list(range(6))
    assert all(c.constraint_satisfied and "tree" in c.text.lower() for c in out.choices)
    single = [
        client.completions.create(
            model=_model(server),
            prompt=p,
            max_tokens=8,
            n=2,
            temperature=0,
            extra_body={"keywords": ["tree"]},
        )  # fmt: skip
        for p in prompts
    ]
    assert [c.text for c in out.choices] == [c.text for s in single for c in s.choices]
    assert out.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in single)
    out = client.completions.create(model=_model(server), prompt=[ids, ids[:1]], max_tokens=8, temperature=0,
                                    extra_body={"keywords": ["tree"]})  # fmt: skip
    assert [c.index for c in out.choices] == [0, 1] and out.usage.prompt_tokens == len(ids) + 1
    # streamed: every choice reassembles
    stream = client.completions.create(model=_model(server), prompt=prompts[:2], max_tokens=8, n=2, seed=3,
                                       stream=True, extra_body={"keywords": ["lake"]})  # fmt: skip
    texts, finished = {}, {}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished[c.index] = c
    assert sorted(finished) == [0, 1, 2, 3] and all("lake" in t.lower() for t in texts.values())

    error = _bad_request(lambda: client.completions.create(model=_model(server), prompt=[len(tokenizer) + 5],
                                                           extra_body={"keywords": ["dog"]}))  # fmt: skip
    assert error.param == "prompt"


def test_logit_bias_bans_exactly_and_biases(server, tokenizer):
    client = _client(server)
    dogs = [i for i in range(len(tokenizer)) if "dog" in tokenizer.decode([i]).lower()]
    out = client.completions.create(model=_model(server), prompt="The dog", max_tokens=10, temperature=0,
                                    best_of=2, logprobs=0, logit_bias={str(i): -100 for i in dogs},
                                    extra_body={"keywords": ["park"]})  # fmt: skip
    (choice,) = out.choices
    assert choice.constraint_satisfied and not any("dog" in t.lower() for t in choice.logprobs.tokens)
    # a ban that leaves no way to write the keyword: 400 naming logit_bias
    with_d = {str(i): -100 for i in range(len(tokenizer)) if re.search("[dD]", tokenizer.decode([i]))}
    error = _bad_request(lambda: client.completions.create(model=_model(server), prompt="The", max_tokens=10,
                                                           logit_bias=with_d, extra_body={"keywords": ["dog"]}))  # fmt: skip
    assert error.param == "logit_bias" and error.code == "unsatisfiable_constraint"
    # a positive bias is a bias: greedy picks " park" as soon as the guide allows it
    park = tokenizer.encode(" park")[0]
    out = client.completions.create(model=_model(server), prompt="The", max_tokens=6, temperature=0,
                                    logit_bias={str(park): 100}, extra_body={"keywords": ["park"]})  # fmt: skip
    assert out.choices[0].text.startswith(" park")
    for bias, message in (({"x1": 3}, "decimal"), ({str(len(tokenizer)): 3}, "vocabulary"), ({"5": 101}, "")):
        error = _bad_request(lambda b=bias: client.completions.create(
            model=_model(server), prompt="The", logit_bias=b, extra_body={"keywords": ["dog"]}))  # fmt: skip
        assert error.param == "logit_bias" and message in error.message


def test_penalties_change_what_repeats(server):
    client = _client(server)

    def repeats(**penalties) -> int:
        out = client.completions.create(model=_model(server), prompt="The", max_tokens=MAX_NEW_TOKENS,
                                        temperature=0, logprobs=0, extra_body={"keywords": ["dog"]},
                                        **penalties)  # fmt: skip
        assert out.choices[0].constraint_satisfied
        tokens = out.choices[0].logprobs.tokens
        return max(tokens.count(t) for t in tokens)

    plain = repeats()
    assert plain > 2  # the random tiny LM repeats itself greedily ...
    assert repeats(frequency_penalty=2.0) < plain  # ... unless each repetition costs
    assert repeats(presence_penalty=2.0) < plain


def test_suffix_and_stop(server, tokenizer):
    client = _client(server)
    out = client.completions.create(model=_model(server), prompt="The dog", suffix=" today.", max_tokens=12,
                                    temperature=0, best_of=2, extra_body={"keywords": ["park"]})  # fmt: skip
    (choice,) = out.choices
    assert choice.constraint_satisfied and "park" in choice.text and not choice.text.endswith(" today.")
    assert choice.finish_reason == "stop"
    out = client.completions.create(model=_model(server), prompt="Rain", stop=["."], max_tokens=12,
                                    temperature=0, extra_body={"keywords": ["tree"]})  # fmt: skip
    assert "." not in out.choices[0].text and "tree" in out.choices[0].text
    # streaming streams the span
    stream = client.completions.create(model=_model(server), prompt="The cat", suffix=" today.", max_tokens=12,
                                       temperature=0, stream=True, extra_body={"keywords": ["park"]})  # fmt: skip
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert "park" in text and "today" not in text
    error = _bad_request(lambda: client.completions.create(model=_model(server), prompt="x", suffix="",
                                                           extra_body={"keywords": ["dog"]}))  # fmt: skip
    assert error.param == "suffix"


# ---------------------------------------------------------------------------------------------- errors


def test_errors_are_openai_errors_naming_the_field(server):
    client = _client(server)
    model = _model(server)
    cases = [
        ({"max_tokens": MAX_NEW_TOKENS + 1}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"extra_body": {"keywords": ["dog"], "temprature": 0.5}}, "temprature"),
        ({"n": 3, "best_of": 2, "temperature": 0}, "n"),
        ({"n": 2, "best_of": 3, "temperature": 0.5}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"logprobs": 21}, "logprobs"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"extra_body": {"constraint": {"all": ["dog", {"word_at": 0, "word": "a"}]}}}, "constraint.all[1].word_at"),
        ({"extra_body": {"keywords": ["celebrated", "building", "vegetable", "children"]}, "max_tokens": 3},
         "constraint"),
        ({"prompt": "word " * 200}, "prompt"),
    ]  # fmt: skip
    for fields, param in cases:
        fields = {"prompt": "The", "extra_body": {"keywords": ["dog"]}} | fields
        error = _bad_request(lambda f=fields: client.completions.create(model=model, **f))
        assert error.param == param, (fields, error.body)
    error = _bad_request(lambda: client.completions.create(model=model, prompt="x", max_tokens=3,
                                                           extra_body={"keywords": ["celebrated", "building",
                                                                                    "vegetable", "children"]}))  # fmt: skip
    assert error.code == "unsatisfiable_constraint" and "max_tokens=3" in error.message
    # fields OpenAI's clients send that do not change the text are accepted
    out = client.completions.create(model=model, prompt="The", max_tokens=4, user="someone", presence_penalty=0,
                                    frequency_penalty=0, extra_body={"keywords": ["dog"]})  # fmt: skip
    assert out.choices[0].constraint_satisfied
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", extra_body={"keywords": ["dog"]})
    assert info.value.body == {"message": info.value.body["message"], "type": "invalid_request_error",
                               "param": "model", "code": "model_not_found"}  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/completions", json={"prompt": "x", "keywords": ["dog"], "temprature": 0.5})
        assert r.status_code == 400 and set(r.json()) == {"error"} and set(r.json()["error"]) == ERROR_KEYS
        assert "temprature" in r.json()["error"]["message"]
        r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == ERROR_KEYS
        big = b'{"prompt": "' + b"a" * 1_100_000 + b'", "keywords": ["dog"]}'
        r = http.post("/v1/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r = http.get("/v1/nothing-here")
        assert r.status_code == 404 and set(r.json()["error"]) == ERROR_KEYS
        # the native API keeps its own shape
        r = http.post("/generate", json={"prompt": "x", "keywords": ["dog"], "temprature": 0.5})
        assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"


# ---------------------------------------------------------------------------------------------- chat


def test_chat_completions(chat_server):
    client = _client(chat_server)
    model = _model(chat_server)
    messages = [{"role": "system", "content": "You write about pets."}, {"role": "user", "content": "A dog?"}]
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0, n=2,
                                         user="someone", extra_body={"keywords": ["frisbee"]})  # fmt: skip
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-") and len(out.choices) == 2
    for i, c in enumerate(out.choices):
        assert c.index == i and c.message.role == "assistant" and "frisbee" in c.message.content
        assert c.finish_reason in ("stop", "length") and c.constraint_satisfied
    # the prompt is the template's text: the usage counts its tokens
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(chat_server.env["PCGEN_LM"]))
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("assistant:")
    assert out.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))

    # logprobs, max_completion_tokens
    out = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8, temperature=0,
                                         logprobs=True, top_logprobs=2, extra_body={"keywords": ["park"]})  # fmt: skip
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    assert len(content) == out.usage.completion_tokens <= 8
    for t in content:
        assert bytes(t.bytes).decode() == t.token and len(t.top_logprobs) <= 2
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the guided argmax

    # streaming, with the usage chunk
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=10, n=2, seed=4,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"constraint": {"keywords": ["snow"]}})  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    texts, roles, finished = {0: "", 1: ""}, set(), set()
    for c in chunks[:-1]:
        (choice,) = c.choices
        roles |= {choice.index} if choice.delta.role == "assistant" else set()
        texts[choice.index] += choice.delta.content or ""
        finished |= {choice.index} if choice.finish_reason else set()
    assert roles == finished == {0, 1} and all("snow" in t.lower() for t in texts.values())


def test_chat_errors(chat_server, server):
    client = _client(chat_server)
    model = _model(chat_server)
    hello = [{"role": "user", "content": "Hello"}]
    cases = [
        ({"max_tokens": 33}, "max_tokens"),
        ({"max_completion_tokens": 33}, "max_completion_tokens"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "xml"}}, "response_format"),  # json_object / json_schema: structured.py
        ({"extra_body": {"keywords": ["dog"], "mesages": []}}, "mesages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content"),
        ({"messages": [{"role": "user", "content": "word " * 200}]}, "messages"),
    ]  # fmt: skip
    for fields, param in cases:
        fields = {"messages": hello, "extra_body": {"keywords": ["dog"]}} | fields
        error = _bad_request(lambda f=fields: client.chat.completions.create(model=model, **f))
        assert error.param is not None and error.param.startswith(param), (fields, error.body)
    # fields that ask for nothing pcgen does not do are accepted
    out = client.chat.completions.create(model=model, messages=hello, max_tokens=4, tools=[], tool_choice="none",
                                         response_format={"type": "text"}, metadata={"a": "b"}, store=False,
                                         extra_body={"keywords": ["dog"]})  # fmt: skip
    assert out.choices[0].constraint_satisfied
    # a model without a chat template says so
    error = _bad_request(lambda: _client(server).chat.completions.create(
        model=_model(server), messages=hello, extra_body={"keywords": ["dog"]}))  # fmt: skip
    assert error.code == "chat_template_missing" and "/v1/completions" in error.message
    cards = {s: httpx.get(s.url + "/v1/models").json()["data"][0] for s in (server, chat_server)}
    assert cards[chat_server]["capabilities"] == {"completions": True, "chat": True}
    assert cards[server]["capabilities"] == {"completions": True, "chat": False}
    assert cards[chat_server]["max_model_len"] == 128 and cards[chat_server]["max_new_tokens"] == 32


# ---------------------------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("doc", ["README.md", "service/README.md"])
def test_the_documented_sdk_example_runs(chat_server, doc):
    """The README's OpenAI SDK example, run as written against a real server (its URL and model id in place
    of the documented ones)."""
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / doc).read_text(), re.M | re.S)
    (code,) = [b for b in blocks if "client.completions.create(" in b]
    assert "client.chat.completions.create(" in code and 'extra_body={"keywords": ["dog", "frisbee"]}' in code
    code = code.replace("http://localhost:8000/v1", chat_server.url + "/v1")
    code = re.sub(r'model="[^"]+"', f'model="{_model(chat_server)}"', code)
    namespace: dict = {}
    exec(compile(code, doc, "exec"), namespace)
    completion, chat = namespace["completion"], namespace["chat"]
    for text, choice in ((completion.choices[0].text, completion.choices[0]),
                         (chat.choices[0].message.content, chat.choices[0])):  # fmt: skip
        assert choice.constraint_satisfied  # natural case and inflections: "Dogs" is a form of "dog"
        assert all(re.search(rf"\b{word}", text, re.I) for word in ("dog", "frisbee")), text


def test_streamed_error_is_an_openai_error():
    """Errors after the stream started come as an OpenAI error object in a data line, then [DONE]."""
    from service.errors import ServiceError
    from service.routes.openai import error_event

    event = error_event(ServiceError("no result within 1 s", error_type="timeout", status=504))
    (data,) = [d for _, d in sse_events(event)]
    assert data == {"error": {"message": "no result within 1 s", "type": "server_error", "param": None,
                              "code": "timeout"}}  # fmt: skip
