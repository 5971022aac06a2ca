"""The served lazy guide (issue 26 §3): past the explicit automaton's cap the server still serves the
constraint, says `"guide": "lazy"`, counts it in pcgen_guides_total, and every output satisfies it; with
PCGEN_GUIDE=exact it is refused as before."""

import re

from pc_core.constraints.checker import check_ids

# each keyword exactly once: 2^4 = 16 states at least, above the server's cap of 8 (the test servers cap
# max_new_tokens at 12)
CONSTRAINT = {"all": [{"count": k, "min": 1, "max": 1} for k in ["dog", "frisbee", "park", "cat"]]}
BODY = {"prompt": "The", "constraint": CONSTRAINT, "max_new_tokens": 12, "num_beams": 2}


def _counted(metrics: str, kind: str) -> float:
    found = re.search(r'^pcgen_guides_total\{[^}]*kind="' + kind + r'"[^}]*\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_past_the_state_cap_the_lazy_guide_serves(start_server, tokenizer):
    capped = start_server("guide-lazy", PCGEN_MAX_STATES="8", PCGEN_CACHE="false")
    try:
        with capped.client() as client:
            r = client.post("/generate", json=BODY)
        metrics = capped.metrics()
    finally:
        capped.stop()
    assert r.status_code == 200, r.text
    assert r.json()["guide"] == "lazy" and _counted(metrics, "lazy") == 1
    for out in r.json()["outputs"]:
        assert out["constraint_satisfied"] and check_ids(CONSTRAINT, tokenizer, out["token_ids"])
    strict = start_server("guide-lazy-exact", PCGEN_GUIDE="exact", PCGEN_MAX_STATES="8", PCGEN_CACHE="false")
    try:
        with strict.client() as client:
            refused = client.post("/generate", json=BODY)
    finally:
        strict.stop()
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "constraint_too_complex", (
        refused.text
    )
