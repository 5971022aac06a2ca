"""The counting operators through `pcgen serve` (tiny GPT-2, H=16 HMM): `count`, `at_least` / `at_most`,
`word_at` from the end and the empty `all` are served and every output satisfies them by the independent
checker; bad values are 422s naming the field; an empty `any` (false) is an unsatisfiable constraint."""

from __future__ import annotations

import pytest

from pc_core import check_ids

SERVED = [
    {"count": "dog", "min": 1, "max": 1},
    {"all": []},
    {"at_least": 1, "of": ["dog", {"count": "cat", "min": 2}]},
    {"at_most": 0, "of": ["the", "a"]},
    {"word_at": -1, "word": "park"},
    {"all": [{"count": "the", "max": 1}, {"word_count": {"min": 2, "max": 8}}]},
]


@pytest.mark.parametrize("constraint", SERVED, ids=[str(i) for i in range(len(SERVED))])
def test_counting_constraints_are_served_and_satisfied(server, tokenizer, constraint):
    body = {"prompt": "The", "constraint": constraint, "num_beams": 2, "num_return_sequences": 2}
    with server.client() as client:
        r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    for output in r.json()["outputs"]:
        assert output["constraint_satisfied"] is True
        assert check_ids(constraint, tokenizer, output["token_ids"]), output["text"]


@pytest.mark.parametrize(
    "constraint, path, fragment",
    [
        ({"count": "dog", "min": 3, "max": 2}, "body.constraint.max", "min (3) must be <= max (2)"),
        ({"all": ["a", {"count": "dog", "min": -1}]}, "body.constraint.all[1].min", ">= 0"),
        ({"at_least": 3, "of": ["dog", "cat"]}, "body.constraint.at_least", "<= 2"),
        ({"at_most": -1, "of": ["dog"]}, "body.constraint.at_most", ">= 0"),
        ({"word_at": -600, "word": "dog"}, "body.constraint.word_at", ">= -512"),
    ],
)
def test_bad_values_are_422_naming_the_field(server, constraint, path, fragment):
    with server.client() as client:
        r = client.post("/generate", json={"prompt": "x", "constraint": constraint})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_constraint" and error["path"] == path, error
    assert fragment in error["message"]


def test_empty_any_is_unsatisfiable(server):
    with server.client() as client:
        r = client.post("/generate", json={"prompt": "x", "constraint": {"any": []}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "unsatisfiable_constraint"
    assert r.json()["error"]["path"] == "constraint"


def test_the_compile_lane_estimate_knows_the_counting_operators():
    """word_at -k keeps a k-word history (2^k states): heavy; a count of one keyword is light."""
    from service.compile_pool import HEAVY_COST, estimated_cost

    assert estimated_cost({"word_at": -12, "word": "dog"}) > HEAVY_COST
    assert estimated_cost({"word_at": 12, "word": "dog"}) < HEAVY_COST
    assert estimated_cost({"count": "dog", "min": 1, "max": 1}) < HEAVY_COST
    at_least = {"at_least": 3, "of": ["dog", "cat", "park", "snow", "lake", "tree"]}
    assert estimated_cost(at_least) == estimated_cost({"keywords": at_least["of"]})
