"""An HMM records the tokenizer (fingerprint) and LM it was distilled for; check_pairing refuses it next to
another tokenizer unless allowed, warns for another LM, and warns that unrecorded (imported) HMMs cannot be
checked. Wired into `pcgen generate` and the service's model loading."""

import json
import logging

import pytest

from pc_core.constraints.vocab import tokenizer_fingerprint
from pc_core.errors import TokenizerMismatch
from pc_core.hmm import HMM
from pc_core.lm import check_pairing
from pcgen.cli import main


def _hmm(tokenizer, **pairing):
    hmm = HMM.random(8, len(tokenizer), seed=0, eos_token_id=tokenizer.eos_token_id)
    hmm.metadata.update(pairing)
    return hmm


def test_save_load_round_trip_the_pairing(tokenizer, tmp_path):
    fingerprint = tokenizer_fingerprint(tokenizer)
    _hmm(tokenizer, tokenizer_fingerprint=fingerprint, lm="org/tiny-lm").save(tmp_path / "hmm")
    config = json.loads((tmp_path / "hmm" / "config.json").read_text())
    assert (config["tokenizer_fingerprint"], config["lm"]) == (fingerprint, "org/tiny-lm")
    back = HMM.load(tmp_path / "hmm")
    assert back.metadata["tokenizer_fingerprint"] == fingerprint and back.metadata["lm"] == "org/tiny-lm"
    assert check_pairing(back, tokenizer, "org/tiny-lm") == "match"

    _hmm(tokenizer).save(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["tokenizer_fingerprint"] is None and config["lm"] is None


def test_another_tokenizer_is_an_error_unless_allowed(tokenizer, caplog):
    hmm = _hmm(tokenizer, tokenizer_fingerprint="0" * 32, lm="org/other-lm")
    actual = tokenizer_fingerprint(tokenizer)
    with pytest.raises(TokenizerMismatch) as err:
        check_pairing(hmm, tokenizer, "org/tiny-lm")
    assert "0" * 32 in str(err.value) and actual in str(err.value) and "org/other-lm" in str(err.value)
    with caplog.at_level(logging.WARNING, "pc_core.lm"):
        assert check_pairing(hmm, tokenizer, "org/tiny-lm", allow_mismatch=True) == "mismatch"
    assert actual in caplog.text and "allowed" in caplog.text
    with pytest.raises(TokenizerMismatch, match="tokens"):  # a vocabulary size mismatch is never allowed
        check_pairing(HMM.random(8, len(tokenizer) + 1), tokenizer, allow_mismatch=True)


def test_another_lm_with_the_same_tokenizer_warns(tokenizer, caplog):
    hmm = _hmm(tokenizer, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), lm="org/base-lm")
    with caplog.at_level(logging.WARNING, "pc_core.lm"):
        assert check_pairing(hmm, tokenizer, "org/base-lm/") == "match"
        assert caplog.text == ""
        assert check_pairing(hmm, tokenizer, "org/fine-tuned-lm") == "match"
    assert "distilled from the LM org/base-lm but is used with org/fine-tuned-lm" in caplog.text


def test_imported_hmms_without_a_fingerprint_load_with_a_warning(tokenizer, caplog):
    hmm = _hmm(tokenizer, source="x", imported_from="ctrl-g")
    with caplog.at_level(logging.WARNING, "pc_core.lm"):
        assert check_pairing(hmm, tokenizer, "org/tiny-lm") == "unchecked"
    assert "cannot be checked" in caplog.text


def test_pcgen_generate_refuses_a_mismatched_hmm(tiny_lm_dir, tokenizer, tmp_path, capsys):
    _hmm(tokenizer, tokenizer_fingerprint="f" * 32).save(tmp_path / "hmm")
    args = ["generate", "--lm", str(tiny_lm_dir), "--hmm", str(tmp_path / "hmm"), "--keywords", "dog",
            "--max-new-tokens", "6", "--num-beams", "2", "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' progress bar
    assert line.startswith("pcgen generate: the HMM was distilled for tokenizer " + "f" * 32)
    assert "--allow-tokenizer-mismatch" in line
    assert main(args + ["--allow-tokenizer-mismatch"]) == 0
    assert "[ok," in capsys.readouterr().out


def test_pcgen_import_hmm_records_the_pairing(tiny_lm_dir, tokenizer, tmp_path):
    _hmm(tokenizer).save(tmp_path / "src")
    assert main(["import-hmm", str(tmp_path / "src"), str(tmp_path / "dst"), "--lm", str(tiny_lm_dir)]) == 0
    back = HMM.load(tmp_path / "dst")
    assert back.metadata["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer)
    assert back.metadata["lm"] == str(tiny_lm_dir)


def test_the_service_checks_the_pairing_when_it_loads(tiny_lm_dir, tokenizer, tmp_path):
    from service.runtime import Runtime
    from service.settings import Settings

    _hmm(tokenizer, tokenizer_fingerprint="f" * 32).save(tmp_path / "hmm")
    settings = {"lm": str(tiny_lm_dir), "hmm": str(tmp_path / "hmm"), "device": "cpu", "compile_workers": 0}
    with pytest.raises(TokenizerMismatch, match="f" * 32):
        Runtime(Settings(**settings))._load_models()
    runtime = Runtime(Settings(**settings, allow_tokenizer_mismatch=True))
    runtime._load_models()
    assert runtime.hmm is not None and runtime.fingerprints["tokenizer"] == tokenizer_fingerprint(tokenizer)
