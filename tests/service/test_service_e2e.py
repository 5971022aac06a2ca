"""End to end against `pcgen serve` in a subprocess (tiny GPT-2, H=16 HMM): every output satisfies its
constraint, streaming reassembles the result, errors and limits (the OpenAI endpoints:
test_service_openai.py)."""

from __future__ import annotations

import httpx
import pytest
from response_text import metric_value, sse_events
from server_processes import MAX_NEW_TOKENS

from pc_core import check_ids

REQUESTS = [
    {"prompt": "The", "keywords": ["dog", "park"], "num_beams": 3, "num_return_sequences": 2},
    {
        "prompt": "A",
        "keywords": ["snow"],
        "do_sample": True,
        "seed": 3,
        "num_return_sequences": 2,
        "top_p": 0.9,
    },
    {
        "prompt": "",
        "constraint": {"all": [{"word_at": 2, "word": "cat"}, {"forbidden": ["the"]}]},
        "num_beams": 2,
    },
    {"prompt": "She", "constraint": {"ordered": ["wake", "coffee"]}, "do_sample": True, "temperature": 0.7},
    {"prompt": "Rain", "constraint": {"any": ["lake", "New York"]}, "max_new_tokens": 8, "min_new_tokens": 4},
]


def _spec(body):
    return body.get("constraint") or {"keywords": body["keywords"]}


@pytest.mark.parametrize("body", REQUESTS)
def test_generate_outputs_satisfy_constraints(server, tokenizer, body):
    with server.client() as client:
        r = client.post("/generate", json=body, headers={"X-Request-ID": "req-123"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-123"
    out = r.json()
    assert out["id"] == "req-123" and out["cached"] is False
    assert len(out["outputs"]) == body.get("num_return_sequences", 1)
    for o in out["outputs"]:
        assert o["constraint_satisfied"] is True
        assert check_ids(_spec(body), tokenizer, o["token_ids"])  # independent re-check
        assert o["finish_reason"] in ("eos", "length")
        assert len(o["token_ids"]) <= body.get("max_new_tokens", MAX_NEW_TOKENS)
    assert out["usage"]["completion_tokens"] == sum(len(o["token_ids"]) for o in out["outputs"])
    assert set(out["timings"]) == {"queue_ms", "dfa_ms", "precompute_ms", "decode_ms", "total_ms"}
    if "keywords" in body:  # the spans of the keywords in the text
        for o in out["outputs"]:
            assert {m["keyword"] for m in o["matches"]} == set(body["keywords"])
            for m in o["matches"]:
                assert m["keyword"].lower() in o["text"][m["start"] : m["end"]].lower()
        # what each keyword accepted: natural case and inflections by default
        forms = {k["keyword"]: k for k in out["keywords"]}
        assert set(forms) == set(body["keywords"])
        for word, form_set in forms.items():
            assert {word, word.capitalize(), word.upper()} <= set(form_set["forms"])
        if "dog" in forms:
            assert "dogs" in forms["dog"]["forms"]
        assert all(k["polarity"] == "required" and k["case"] == "natural" for k in out["keywords"])
    if "forbidden" in str(body.get("constraint")):
        assert {"keyword": "the", "polarity": "forbidden"}.items() <= next(
            k for k in out["keywords"] if k["polarity"] == "forbidden"
        ).items()


@pytest.mark.parametrize("body", [REQUESTS[0], REQUESTS[1]])
def test_generate_stream_reassembles_the_result(server, tokenizer, body):
    body = {**body, "stream": True, "prompt": body["prompt"] + " and"}  # not cached: a fresh computation
    with server.client() as client:
        r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1][0] == "result"
    tokens = [data for name, data in events[:-1]]
    assert all(name == "token" for name, _ in events[:-1]) and tokens
    result = events[-1][1]
    for index, o in enumerate(result["outputs"]):
        assert "".join(t["text"] for t in tokens if t["index"] == index) == o["text"]
        assert [i for t in tokens if t["index"] == index for i in t["token_ids"]] == o["token_ids"]
        assert o["constraint_satisfied"] and check_ids(_spec(body), tokenizer, o["token_ids"])


def test_deterministic_requests_are_cached(server):
    body = {"prompt": "The cat", "keywords": ["couch"], "num_beams": 2}
    with server.client() as client:
        first = client.post("/generate", json=body).json()
        second = client.post("/generate", json=body).json()
        assert first["cached"] is False and second["cached"] is True
        assert second["outputs"] == first["outputs"] and second["id"] != first["id"]
        # the cached result streams too
        events = sse_events(client.post("/generate", json={**body, "stream": True}).text)
        assert events[-1][0] == "result" and events[-1][1]["cached"] is True
        assert "".join(d["text"] for n, d in events if n == "token") == first["outputs"][0]["text"]
        # unseeded sampling is never cached
        body = {"prompt": "The cat", "keywords": ["couch"], "do_sample": True}
        assert client.post("/generate", json=body).json()["cached"] is False
        assert client.post("/generate", json=body).json()["cached"] is False
    assert metric_value(server.metrics(), "pcgen_cache_hits_total") >= 2


def test_validation_errors_name_the_field(server):
    with server.client() as client:
        r = client.post(
            "/generate", json={"prompt": "x", "constraint": {"all": ["dog", {"word_at": 0, "word": "a"}]}}
        )
        assert r.status_code == 422
        body = r.json()
        assert body["detail"][0]["loc"] == ["body", "constraint", "all", 1, "word_at"]
        assert body["error"] == {"type": "invalid_constraint", "path": "body.constraint.all[1].word_at",
                                 "message": "must be >= 1 (1 is the first word) or <= -1 (-1 is the last word)"}  # fmt: skip
        r = client.post("/generate", json={"prompt": "x", "keywords": ["dog", 3]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "keywords", 1]
        r = client.post(
            "/generate", json={"prompt": "x", "keywords": ["dog"], "max_new_tokens": MAX_NEW_TOKENS + 1}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "max_new_tokens"]
        r = client.post(
            "/generate", json={"prompt": "x", "keywords": ["dog"], "num_beams": 2, "num_return_sequences": 3}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "num_return_sequences"]
        r = client.post("/generate", content=b'{"prompt": "x", "keywords": ["dog"], "temperature": NaN}',
                        headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "temperature"]
        r = client.post("/generate", json={"prompt": "x"})
        assert r.status_code == 422 and r.json()["error"]["path"] == "body.constraint"
        r = client.post("/generate", json={"prompt": "x", "keywords": ["dog"], "bogus": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "bogus"]
        r = client.post("/generate", content=b'{"prompt": "\\ud800", "keywords": ["dog"]}',
                        headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "prompt"]
        r = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422


def test_constraint_errors_have_a_type(server):
    with server.client() as client:
        words = ["celebrated", "building", "vegetable", "children", "tourist"]
        r = client.post("/generate", json={"prompt": "x", "keywords": words, "max_new_tokens": 3})
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["type"] == "unsatisfiable_constraint" and "max_new_tokens=3" in error["message"]
        assert error["path"] == "constraint"
        # constraint_too_complex: past the exact guide's cap with PCGEN_GUIDE=exact
        # (tests/service/test_service_lazy_guide.py); by default the lazy guide serves such constraints
        r = client.post("/generate", json={"prompt": "x", "constraint": {"tokens": [10**6]}})
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_constraint"
        r = client.post("/generate", json={"prompt": "word " * 200, "keywords": ["dog"]})
        assert r.status_code == 422 and r.json()["error"]["type"] == "context_length_exceeded"
    text = server.metrics()
    assert metric_value(text, "pcgen_constraint_errors_total", {"type": "unsatisfiable_constraint"}) >= 1


def test_body_size_limit(server):
    with server.client() as client:
        big = b'{"prompt": "' + b"a" * 1_100_000 + b'", "keywords": ["dog"]}'
        r = client.post("/generate", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

        def chunks():  # no Content-Length: the limit applies while reading
            yield b'{"prompt": "'
            for _ in range(40):
                yield b"a" * 50_000
            yield b'", "keywords": ["dog"]}'

        r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_probes_and_metrics(server):
    with server.client() as client:
        assert client.get("/health/live").json() == {"status": "ok"}
        ready = client.get("/health/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready" and body["lm_loaded"] and body["hmm_loaded"]
        assert body["warmup"] == "ok" and body["redis"] == "disabled"
        alias = client.get("/health")  # where vLLM and TGI users look
        assert alias.status_code == 200 and alias.json()["status"] == "ready"
        assert client.get("/docs").status_code == 200
        assert "/generate" in client.get("/openapi.json").json()["paths"]
    text = server.metrics()
    for name in ("pcgen_requests_total", "pcgen_request_duration_seconds_bucket", "pcgen_queue_time_seconds_bucket",
                 "pcgen_time_to_first_token_seconds_bucket", "pcgen_time_per_output_token_seconds_bucket",
                 "pcgen_generated_tokens_total", "pcgen_batch_size_bucket", "pcgen_queue_depth",
                 "pcgen_cache_hits_total", "pcgen_cache_misses_total", "pcgen_constraint_outcomes_total",
                 "pcgen_dfa_states_bucket", "pcgen_dfa_compile_seconds_bucket", "pcgen_guide_precompute_seconds_bucket",
                 "pcgen_decode_step_seconds_bucket", "pcgen_model_info"):  # fmt: skip
        assert name in text, name
    assert metric_value(text, "pcgen_requests_total", {"route": "/generate", "status": "200"}) >= 1
    assert metric_value(text, "pcgen_constraint_outcomes_total", {"outcome": "not_satisfied"}) == 0
    assert 'hmm_hidden_size="16"' in text and 'device="cpu"' in text


def test_client_disconnect_cancels_the_stream(server):
    body = {"prompt": "Birds", "keywords": ["lake", "fish"], "do_sample": True, "num_return_sequences": 4,
            "stream": True}  # fmt: skip
    before = metric_value(server.metrics(), "pcgen_cancelled_requests_total", {"reason": "disconnect"})
    with httpx.Client(base_url=server.url, timeout=30) as client:
        with client.stream("POST", "/generate", json=body) as r:
            assert r.status_code == 200
            next(r.iter_raw())  # the first event arrived; hang up mid-stream
    import time

    deadline = time.monotonic() + 120  # a poll: it ends as soon as the server is idle
    while time.monotonic() < deadline:
        text = server.metrics()
        if metric_value(text, "pcgen_active_requests") == 0:
            break
        time.sleep(0.1)
    assert metric_value(server.metrics(), "pcgen_active_requests") == 0
    # the tiny model may finish before the disconnect is seen: either way nothing is left running
    assert (
        metric_value(server.metrics(), "pcgen_cancelled_requests_total", {"reason": "disconnect"}) >= before
    )
