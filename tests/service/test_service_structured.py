"""Structured output against `pcgen serve` (tiny random GPT-2, H=16 HMM): OpenAI's response_format and vLLM's
guided_* / structured_outputs, alone and with pcgen's keywords; outputs validated by `jsonschema` and `re`;
errors name the body's path; a schema too long for max_tokens is refused before decoding."""

from __future__ import annotations

import json
import re

import pytest
from server_processes import MAX_NEW_TOKENS

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
    "required": ["n"],
    "additionalProperties": False,
}


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _complete(server, **fields):
    client = _client(server)
    model = client.models.list().data[0].id
    return client.completions.create(model=model, prompt="The", max_tokens=MAX_NEW_TOKENS, **fields)


def test_response_format_json_schema_validates(server):
    fmt = {"type": "json_schema", "json_schema": {"name": "counter", "schema": SCHEMA, "strict": True}}
    out = _complete(server, n=2, seed=1, extra_body={"response_format": fmt})
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMA)
        assert " " not in choice.text and choice.constraint_satisfied


@pytest.mark.parametrize(
    "extra, check",
    [
        ({"guided_regex": r"[a-c]{2}\d"}, lambda t: re.fullmatch(r"[a-c]{2}\d", t)),
        ({"guided_choice": ["yes", "no", "maybe"]}, lambda t: t in ("yes", "no", "maybe")),
        ({"structured_outputs": {"regex": r"(dog|cat)s?"}}, lambda t: re.fullmatch(r"(dog|cat)s?", t)),
        ({"guided_json": {"type": "array", "items": {"enum": [1, 2]}, "maxItems": 2}},
         lambda t: json.loads(t) in ([], [1], [2], [1, 1], [1, 2], [2, 1], [2, 2])),
        ({"response_format": {"type": "json_object"}}, lambda t: isinstance(json.loads(t), dict)),
    ],
)  # fmt: skip
def test_guided_fields(server, extra, check):
    out = _complete(server, seed=3, extra_body=extra)
    assert check(out.choices[0].text), out.choices[0].text
    assert out.choices[0].constraint_satisfied


def test_keywords_inside_structured_output(server):
    out = _complete(
        server, temperature=0, extra_body={"guided_choice": ["a dog", "a cat", "no"], "keywords": ["dog"]}
    )
    assert out.choices[0].text == "a dog"


def test_errors_name_the_body_path(server):
    bad = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}},
         "response_format.json_schema.schema.properties.tags.uniqueItems"),
        ({"guided_regex": r"(a)\1"}, "guided_regex"),
        ({"guided_json": {"type": "string", "format": "hostname"}}, "guided_json.format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"grammar": "x"}}, "structured_outputs"),
    ]  # fmt: skip
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            _complete(server, extra_body=extra)
        assert info.value.param == param, info.value.body


def test_schema_longer_than_max_tokens_is_refused(server):
    long = {"type": "string", "pattern": "^x{40}$"}  # 40 characters: more tokens than the horizon
    with pytest.raises(openai.BadRequestError) as info:
        _complete(server, extra_body={"guided_json": long})
    assert info.value.code == "unsatisfiable_constraint"


def test_generate_takes_structured_constraints(server):
    with server.client() as http:
        body = {"prompt": "The", "constraint": {"json_schema": SCHEMA}, "max_new_tokens": MAX_NEW_TOKENS}
        r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    (output,) = r.json()["outputs"]
    jsonschema.validate(json.loads(output["text"]), SCHEMA)
    assert output["constraint_satisfied"] and output["finish_reason"] == "eos"
    with server.client() as http:
        http_error = http.post(
            "/generate", json={**body, "constraint": {"json_schema": {"type": "array", "uniqueItems": True}}}
        )
    assert http_error.status_code == 422 and "json_schema.uniqueItems" in http_error.text
