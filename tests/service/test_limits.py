"""ServerLimits: every cap a request is checked against, from the settings and the model's context."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from pc_core.constraints import parse_constraint
from pc_core.constraints.nodes import keywords_by_polarity
from service.errors import BadRequest
from service.limits import CAPS, ServerLimits, check_context
from service.settings import Settings


def _limits(**settings) -> ServerLimits:
    return ServerLimits.from_settings(Settings(hmm="unused", **settings))


def test_the_caps_are_the_settings_and_the_horizon_leaves_room_for_a_prompt_token():
    limits = _limits(max_new_tokens=500, max_beams=3, max_prompt_chars=10)
    assert (limits.max_new_tokens, limits.max_beams, limits.max_prompt_chars) == (500, 3, 10)
    settings = Settings(hmm="unused", max_new_tokens=500, max_beams=3)
    capped = ServerLimits.from_settings(settings, max_positions=128)
    assert capped.max_new_tokens == 127 and capped.max_beams == 3 and settings.max_new_tokens == 500
    assert limits.horizon(None, 32) == 32 and limits.horizon(7, 32) == 7
    assert _limits(max_new_tokens=12).horizon(None, 32) == 12


def test_each_body_name_is_checked_against_its_cap_and_named_in_the_error():
    limits = _limits(max_new_tokens=20, max_beams=4, max_prompt_chars=5)
    limits.check(prompt="short", max_tokens=20, n=4, best_of=None)  # at the caps, and not sent: fine
    with pytest.raises(RequestValidationError) as info:
        limits.check(prompt="longer", max_tokens=21, n=5, min_tokens=3)
    found = {entry["loc"][1]: entry["type"] for entry in info.value.errors()}
    assert found == {"prompt": "string_too_long", "max_tokens": "less_than_equal", "n": "less_than_equal"}
    assert {limits.cap(name) for name in CAPS} == {20, 4, 5, limits.max_suffix_chars}


def test_keyword_counts_and_lengths():
    limits = _limits(max_keywords=2, max_forbidden=1, max_keyword_chars=5)
    ok = keywords_by_polarity(parse_constraint({"all": ["dog", "cat", {"forbidden": ["rat"]}]}))
    limits.check_keywords(*ok, ("constraint",))
    for raw, message in (({"keywords": ["a", "b", "c"]}, "at most 2 keywords (got 3)"),
                         ({"forbidden": ["a", "b"]}, "at most 1 forbidden keywords (got 2)"),
                         ({"keywords": ["elephant"]}, "keyword longer than 5 characters")):  # fmt: skip
        with pytest.raises(RequestValidationError) as info:
            limits.check_keywords(*keywords_by_polarity(parse_constraint(raw)), ("keywords",))
        (entry,) = info.value.errors()
        assert (
            entry["loc"] == ("body", "keywords") and message in entry["msg"] and entry["type"] == "too_long"
        )


def test_decode_params_carry_the_compile_limits_and_name_the_body_field():
    limits = _limits(max_states=1000, compile_time_budget_s=2.5, guide="exact")
    params = limits.decode_params({"max_new_tokens": 8}, {})
    assert (params.max_states, params.time_budget_s, params.guide) == (1000, 2.5, "exact")
    with pytest.raises(RequestValidationError) as info:
        limits.decode_params({"max_new_tokens": 8, "min_new_tokens": 9}, {"min_new_tokens": "min_tokens"})
    assert info.value.errors()[0]["loc"] == ("body", "min_tokens")


def test_the_context_rule_names_the_field_at_fault():
    check_context(None, 10_000, 10_000)  # no known context: no bound
    check_context(128, 100, 28)
    with pytest.raises(BadRequest) as info:
        check_context(128, 100, 29, "max_tokens")
    assert info.value.path == "prompt" and "max_tokens (29)" in info.value.message
    with pytest.raises(BadRequest) as info:
        check_context(128, 0, 128, "max_tokens")
    assert info.value.path == "max_tokens" and info.value.error_type == "context_length_exceeded"
