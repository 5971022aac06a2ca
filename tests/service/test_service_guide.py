"""The served guide (issue 26 §2-3): responses say which guide ran, metrics count both kinds, and past the
budget the server either runs the factored guide (every output still satisfies the constraint) or, with
PCGEN_GUIDE=exact, refuses with what the exact guide would cost."""

import re

from pc_core.constraints.checker import check_ids

KEYWORDS = ["dog", "frisbee", "catch", "park"]
# the test servers cap max_new_tokens at 12
BODY = {"prompt": "The", "keywords": KEYWORDS, "max_new_tokens": 12, "num_beams": 2}


def _counted(metrics: str, kind: str) -> float:
    found = re.search(r'^pcgen_guides_total\{[^}]*kind="' + kind + r'"[^}]*\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_within_budget_the_exact_guide_runs(server):
    with server.client() as client:
        r = client.post("/generate", json={**BODY, "keywords": ["dog", "frisbee"], "max_new_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["guide"] == "exact"
    assert _counted(server.metrics(), "exact") >= 1


def test_past_the_budget_factored_or_refused(start_server, tokenizer):
    tight = start_server("guide-factored", PCGEN_GUIDE_BUDGET_GFLOPS="0.00001", PCGEN_CACHE="false")
    try:
        with tight.client() as client:
            r = client.post("/generate", json=BODY)
        metrics = tight.metrics()
    finally:
        tight.stop()
    assert r.status_code == 200, r.text
    assert r.json()["guide"] == "factored" and _counted(metrics, "factored") == 1
    for out in r.json()["outputs"]:
        assert out["constraint_satisfied"] and check_ids({"keywords": KEYWORDS}, tokenizer, out["token_ids"])
    strict = start_server("guide-exact", PCGEN_GUIDE="exact", PCGEN_GUIDE_BUDGET_GFLOPS="0.00001")
    try:
        with strict.client() as client:
            r = client.post("/generate", json=BODY)
    finally:
        strict.stop()
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "constraint_too_complex" and "exact guide would need" in error["message"]
