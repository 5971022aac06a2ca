"""Schema fuzzing of the served OpenAPI document (schemathesis 4): valid and invalid inputs, never a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

EXAMPLES = {"positive": 50, "negative": 30}


def test_no_input_produces_a_server_error(server):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /generate", "POST /v1/completions", "GET /v1/models", "GET /health/ready"} <= labels
    failures = []
    seen: dict[tuple[str, str, int], int] = {}

    def fuzz(operation, mode, n: int) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case):
            response = case.call(base_url=server.url, timeout=120)
            key = (operation.label, mode.value, response.status_code)
            seen[key] = seen.get(key, 0) + 1
            if response.status_code >= 500:
                failures.append((operation.label, mode.value, case.body, response.status_code, response.text))

        run()

    for operation in operations:
        for mode in schemathesis.GenerationMode:
            try:
                fuzz(operation, mode, EXAMPLES[mode.value] if operation.method.upper() == "POST" else 5)
            except Unsatisfiable:  # no parameters and no body: nothing invalid to send
                assert mode is schemathesis.GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    print(sorted(seen.items()))
    assert failures == [], failures[:5]
    # the fuzzing reached the engine: some generated requests were valid and answered
    assert (
        seen.get(("POST /generate", "positive", 200), 0)
        + seen.get(("POST /v1/completions", "positive", 200), 0)
        > 0
    )
    log = server.log_path.read_text()  # streams report failures in-band: the server log has them all
    assert "internal error" not in log and "decoding step failed" not in log and "Traceback" not in log
