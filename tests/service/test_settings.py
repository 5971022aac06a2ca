"""Settings from the environment and from flags, and their error messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.cli import BOOL_SETTINGS, VALUE_SETTINGS, build_parser, load_settings
from service.settings import Settings, describe_error


def test_settings_from_env_and_errors(monkeypatch):
    monkeypatch.setenv("PCGEN_HMM", "/models/hmm")
    monkeypatch.setenv("PCGEN_API_KEYS", "first-key-1, second-key-2")
    monkeypatch.setenv("PCGEN_MAX_BATCH_SIZE", "4")
    s = Settings()
    assert (
        s.api_keys == ["first-key-1", "second-key-2"]
        and s.max_batch_size == 4
        and s.served_model == "gpt2-large"
    )
    monkeypatch.setenv("PCGEN_RATE_LIMIT", "lots")
    monkeypatch.setenv("PCGEN_REDIS_URL", "http://localhost")
    monkeypatch.setenv("PCGEN_DEVICE", "tpu")
    with pytest.raises(ValidationError) as info:
        Settings()
    message = describe_error(info.value)
    for name in (
        "PCGEN_RATE_LIMIT / --rate-limit",
        "PCGEN_REDIS_URL / --redis-url",
        "PCGEN_DEVICE / --device",
    ):
        assert name in message
    monkeypatch.delenv("PCGEN_HMM")
    with pytest.raises(ValidationError, match="hmm"):
        Settings(rate_limit="10/second", redis_url=None, device="cpu")


def test_every_setting_is_a_flag_and_flags_override_env(monkeypatch, capsys):
    assert set(VALUE_SETTINGS) | set(BOOL_SETTINGS) == set(Settings.model_fields)
    assert {k for k, f in Settings.model_fields.items() if f.annotation is bool} == set(BOOL_SETTINGS)
    help_text = build_parser().format_help()
    assert all("--" + name.replace("_", "-") in help_text for name in Settings.model_fields)
    monkeypatch.setenv("PCGEN_HMM", "/env/hmm")
    monkeypatch.setenv("PCGEN_MAX_QUEUE", "5")
    s = load_settings({"max_queue": "9", "warmup": False})
    assert s.max_queue == 9 and s.warmup is False and s.hmm == "/env/hmm"
    with pytest.raises(SystemExit):
        load_settings({"max_queue": "0"})
    assert "PCGEN_MAX_QUEUE / --max-queue" in capsys.readouterr().err
