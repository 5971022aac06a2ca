"""Characters split across tokens, served (docs/method.md §3): the test BPE writes CJK characters only as
byte tokens; the streamed pieces and the results never contain U+FFFD or a broken character."""

from __future__ import annotations

from response_text import sse_events

from pc_core import check_ids


def test_generate_streams_split_characters_whole(server, tokenizer):
    body = {"prompt": "The", "keywords": ["中文"], "max_new_tokens": 12, "do_sample": True, "seed": 11,
            "num_return_sequences": 2, "stream": True}  # fmt: skip
    with server.client() as client:
        r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert events[-1][0] == "result"
    tokens = [data for name, data in events[:-1] if name == "token"]
    assert tokens and all("\ufffd" not in t["text"] for t in tokens)
    for index, out in enumerate(events[-1][1]["outputs"]):
        assert out["constraint_satisfied"] and "中文" in out["text"] and "\ufffd" not in out["text"]
        assert check_ids({"keywords": ["中文"]}, tokenizer, out["token_ids"])
        assert "".join(t["text"] for t in tokens if t["index"] == index) == out["text"]


def test_openai_completions_stream_split_characters_whole(server):
    body = {"prompt": "A", "constraint": {"keywords": ["中文"]}, "max_tokens": 12, "n": 2, "seed": 5,
            "stream": True}  # fmt: skip
    with server.client() as http:
        r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    events = [data for _, data in sse_events(r.text)]
    assert events[-1] == "[DONE]"
    texts, finished = {0: "", 1: ""}, {}
    for chunk in events[:-1]:
        for choice in chunk["choices"]:
            assert "\ufffd" not in choice["text"]
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"] is not None:
                finished[choice["index"]] = choice
    assert set(finished) == {0, 1} and all(f["constraint_satisfied"] for f in finished.values())
    assert all("中文" in t for t in texts.values())
