"""`suffix` and `stop` through `/generate` against a real server (tiny GPT-2, H=16 HMM): the span is returned,
the generated tokens decode to span + the suffix's first word (the junction; the rest is attached, see
pc_core.infill), the constraint holds on the span by the independent checker, suffixes of thousands of
characters are served up to the server's max_suffix_chars, stop strings end the text, streams carry the span,
and the cache tells requests with different affixes apart."""

from __future__ import annotations

import pytest
from response_text import sse_events

from pc_core import check_ids
from pc_core.constraints.continuation import decode_continuation
from pc_core.infill import split_suffix

LONG_SUFFIX = (" and the dog ran to the park, where the girl sat by the lake with her coffee." * 22)[:1600]

CASES = [
    {
        "prompt": "The dog",
        "suffix": " in the park.",
        "keywords": ["snow"],
        "max_new_tokens": 24,
        "num_beams": 2,
    },
    {
        "prompt": "A",
        "suffix": ", said the girl.",
        "constraint": {"all": ["lake", {"word_count": {"min": 2, "max": 6}}]},
        "max_new_tokens": 30,
        "do_sample": True,
        "seed": 5,
    },  # fmt: skip
    {"prompt": "Rain", "stop": ["."], "keywords": ["tree"], "max_new_tokens": 16, "num_beams": 2},
    {"prompt": "The cat", "suffix": LONG_SUFFIX, "keywords": ["snow"], "max_new_tokens": 20, "num_beams": 2},
    {
        "prompt": "She",
        "stop": [" and", "!"],
        "keywords": ["coffee"],
        "max_new_tokens": 16,
        "do_sample": True,
        "seed": 1,
    },
]


@pytest.fixture(scope="module")
def server(start_server):
    """Spans with a suffix need more tokens than the other tests' servers allow."""
    return start_server("infilling", PCGEN_MAX_NEW_TOKENS="32", PCGEN_MAX_BATCH_SIZE="8")


def _constraint(body: dict) -> object:
    return body.get("constraint") or {"keywords": body["keywords"]}


@pytest.mark.parametrize("body", CASES)
def test_spans_satisfy_the_constraint_and_meet_the_suffix(server, tokenizer, body):
    with server.client() as client:
        r = client.post("/generate", json=body | {"return_full_text": True})
    assert r.status_code == 200, r.text
    suffix, stop = body.get("suffix"), tuple(body.get("stop", ()))
    for out in r.json()["outputs"]:
        assert out["constraint_satisfied"] is True
        junction = split_suffix(suffix)[0] if suffix is not None else None
        assert check_ids(_constraint(body), tokenizer, out["token_ids"], suffix=junction, stop=stop)
        decoded = decode_continuation(tokenizer, out["token_ids"])
        if suffix is not None:  # the tokens decode to span + the suffix's first word, then end
            assert decoded == out["text"] + junction
            assert out["ranking"] in ("span+suffix", "span+junction")
            assert out["full_text"] == out["text"] + suffix
            assert out["finish_reason"] == "eos"
        else:
            assert not any(s in out["text"] for s in stop)
            assert out["finish_reason"] in ("stop", "eos", "length")
            if out["finish_reason"] == "stop":
                assert any(decoded.startswith(out["text"] + s) for s in stop)


def test_the_stream_carries_the_span(server):
    body = CASES[0] | {"stream": True, "prompt": "The cat"}
    with server.client() as client:
        r = client.post("/generate", json=body)
    events = sse_events(r.text)
    assert events[-1][0] == "result"
    result = events[-1][1]
    for index, out in enumerate(result["outputs"]):
        streamed = "".join(data["text"] for name, data in events[:-1] if data["index"] == index)
        assert streamed == out["text"]  # the span; the suffix is not streamed as generated text
        assert out["full_text"] == out["text"] + body["suffix"]  # full_text by default, in the result event


def test_affixes_are_part_of_the_cache_key(server):
    base = {"prompt": "The", "keywords": ["dog"], "max_new_tokens": 20, "num_beams": 2}
    with server.client() as client:
        first = client.post("/generate", json=base | {"suffix": " today."}).json()
        other = client.post("/generate", json=base | {"suffix": " at home."}).json()
        again = client.post("/generate", json=base | {"suffix": " today."}).json()
        stop_a = client.post("/generate", json=base | {"stop": ["x", "."]}).json()
        stop_b = client.post("/generate", json=base | {"stop": [".", "x"]}).json()  # the same set of stops
    assert first["cached"] is False and other["cached"] is False and again["cached"] is True
    assert stop_a["cached"] is False and stop_b["cached"] is True


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"suffix": ""}, "suffix"),
        ({"suffix": "x" * 32_001}, "suffix"),  # the default max_suffix_chars is 32,000
        ({"stop": [""]}, "stop"),
        ({"stop": "abc", "suffix": "xx abc yy"}, "stop"),
        ({"stop": 3}, "stop"),
        ({"suffix": " catdogcatdogcatdogcat and the end.", "max_new_tokens": 3}, "suffix"),  # its first word
    ],
)
def test_bad_affixes_name_their_field(server, extra, field):
    with server.client() as client:
        r = client.post(
            "/generate", json={"prompt": "The", "keywords": ["dog"], "max_new_tokens": 12} | extra
        )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["path"].removeprefix("body.").startswith(field), error


def test_the_suffix_limit_is_a_setting(start_server):
    server = start_server("infilling-limit", PCGEN_MAX_NEW_TOKENS="32", PCGEN_MAX_SUFFIX_CHARS="1000")
    body = {"prompt": "The", "keywords": ["dog"], "max_new_tokens": 12}
    with server.client() as client:
        refused = client.post("/generate", json=body | {"suffix": LONG_SUFFIX})
        served = client.post(
            "/generate", json=body | {"suffix": LONG_SUFFIX[:1000], "return_full_text": True}
        )
    assert refused.status_code == 422 and refused.json()["error"]["path"] == "body.suffix", refused.text
    assert "1000" in refused.json()["error"]["message"]
    assert served.status_code == 200, served.text
    assert all(o["full_text"] == o["text"] + LONG_SUFFIX[:1000] for o in served.json()["outputs"])
