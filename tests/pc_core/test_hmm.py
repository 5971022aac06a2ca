"""HMM construction, checkpoint round trips, validation and the reference-format importers."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from pc_core.errors import HMMFormatError
from pc_core.hmm import HMM


def test_random_is_positive_non_uniform_and_normalised():
    hmm = HMM.random(8, 50, seed=1, eos_token_id=49)
    for name, t in (("i", hmm.log_initial), ("a", hmm.log_transition), ("b", hmm.log_emission)):
        assert torch.isfinite(t).all(), name
        torch.testing.assert_close(
            torch.logsumexp(t, -1), torch.zeros_like(torch.logsumexp(t, -1)), atol=1e-5, rtol=0
        )
        assert t.exp().std() > 0, name
    assert HMM.random(8, 50, seed=1).fingerprint == HMM.random(8, 50, seed=1).fingerprint
    assert HMM.random(8, 50, seed=1).fingerprint != HMM.random(8, 50, seed=2).fingerprint


def test_save_load_round_trip(tmp_path):
    hmm = HMM.random(6, 40, seed=3, eos_token_id=39)
    hmm.metadata["lm"] = "tiny"
    hmm.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    back = HMM.load(tmp_path / "m")
    assert torch.equal(back.log_emission, hmm.log_emission) and back.eos_token_id == 39
    assert back.metadata["lm"] == "tiny" and back.fingerprint == hmm.fingerprint
    with open(tmp_path / "m" / "model.safetensors", "rb") as fh:
        assert b"pickle" not in fh.read(200)


def _write_pcgen(path, tensors, config):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda t, c: t.update(log_transition=t["log_transition"][:, :3].contiguous()),
            "transition has shape",
        ),
        (lambda t, c: t["log_emission"].__setitem__((0, 0), float("nan")), "NaN"),
        (lambda t, c: t["log_emission"].__setitem__((1, 2), float("-inf")), "zero probabilities"),
        (lambda t, c: t.update(log_initial=t["log_initial"] + 0.5), "initial rows do not sum to 1"),
        (lambda t, c: c.update(vocab_size=99), "config says vocab_size=99"),
        (lambda t, c: c.update(eos_token_id=400), "eos_token_id 400 is outside"),
        (lambda t, c: t.pop("log_emission"), "missing tensors"),
    ],
)
def test_corrupt_checkpoints_name_the_problem(tmp_path, mutate, message):
    hmm = HMM.random(4, 30, seed=0, eos_token_id=29)
    hmm.save(tmp_path / "ok")
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    tensors = {k: getattr(hmm, k).clone() for k in ("log_initial", "log_transition", "log_emission")}
    mutate(tensors, config)
    _write_pcgen(tmp_path / "bad", tensors, config)
    with pytest.raises(HMMFormatError, match=message):
        HMM.load(tmp_path / "bad")


def test_truncated_and_missing_files(tmp_path):
    HMM.random(4, 30, seed=0).save(tmp_path / "m")
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    (tmp_path / "m" / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HMMFormatError, match="not a readable safetensors"):
        HMM.load(tmp_path / "m")
    with pytest.raises(HMMFormatError, match="no such file"):
        HMM.load(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HMMFormatError, match="no config.json"):
        HMM.load(tmp_path / "empty")


def _ctrlg_dir(path, hmm):
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps(
            {"hidden_states": hmm.hidden_size, "vocab_size": hmm.vocab_size, "eos_token_id": hmm.eos_token_id}
        )
    )
    save_file(
        {
            "alpha_exp": hmm.log_transition.exp(),
            "beta": hmm.log_emission.clone(),
            "gamma": hmm.log_initial.clone(),
        },
        str(path / "model.safetensors"),
    )


def test_import_ctrlg_and_gelato(tmp_path):
    hmm = HMM.random(5, 20, seed=4, eos_token_id=19)
    _ctrlg_dir(tmp_path / "ctrlg", hmm)
    got = HMM.load(tmp_path / "ctrlg")
    torch.testing.assert_close(got.log_transition, hmm.log_transition, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.log_emission, hmm.log_emission, atol=1e-5, rtol=0)
    assert got.eos_token_id == 19 and got.metadata["imported_from"] == "ctrl-g"

    gelato = {
        "hidden_states": 5,
        "vocab_size": 20,
        "alpha": hmm.log_transition.clone(),
        "beta": hmm.log_emission.clone(),
        "gamma": hmm.log_initial.clone(),
    }
    torch.save(gelato, tmp_path / "gelato.th")
    got = HMM.load(tmp_path / "gelato.th")
    torch.testing.assert_close(got.log_initial, hmm.log_initial, atol=1e-5, rtol=0)
    assert got.metadata["imported_from"] == "gelato"


def test_ctrlg_absorbing_end_state_zeros_are_floored(tmp_path):
    """The reference convention: state H-1 emits only EOS (exact zeros elsewhere)."""
    hmm = HMM.random(4, 10, seed=2, eos_token_id=9)
    beta = hmm.log_emission.clone()
    beta[-1] = float("-inf")
    beta[-1, 9] = 0.0
    alpha = hmm.log_transition.exp()
    alpha[-1] = 0.0
    alpha[-1, -1] = 1.0
    path = tmp_path / "ctrlg"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"hidden_states": 4, "vocab_size": 10, "eos_token_id": 9}))
    save_file(
        {"alpha_exp": alpha, "beta": beta, "gamma": hmm.log_initial.clone()}, str(path / "model.safetensors")
    )
    got = HMM.load(path)
    assert torch.isfinite(got.log_emission).all() and got.log_emission[-1, 9] > -1e-6


def test_gelato_loader_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save(
        {"hidden_states": 2, "vocab_size": 3, "alpha": Evil(), "beta": 0, "gamma": 0}, tmp_path / "evil.th"
    )
    with pytest.raises(HMMFormatError, match="not a readable torch file"):
        HMM.load(tmp_path / "evil.th")


def test_hub_id_loads_offline_from_cache(tmp_path, monkeypatch):
    """A hub id resolves through huggingface_hub's cache layout with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--ctrlg--hmm_tiny_test"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    hmm = HMM.random(3, 12, seed=8, eos_token_id=11)
    _ctrlg_dir(repo / "snapshots" / revision, hmm)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    got = HMM.load("ctrlg/hmm_tiny_test")
    torch.testing.assert_close(got.log_emission, hmm.log_emission, atol=1e-5, rtol=0)
    with pytest.raises(HMMFormatError, match="cannot load HMM"):
        HMM.load("ctrlg/not_in_cache")


def test_import_hmm_cli(tmp_path):
    hmm = HMM.random(4, 16, seed=5, eos_token_id=15)
    _ctrlg_dir(tmp_path / "src", hmm)
    out = subprocess.run(
        [sys.executable, "-m", "pcgen.cli", "import-hmm", str(tmp_path / "src"), str(tmp_path / "dst")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "hidden_size=4" in out.stdout
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["format"] == "pcgen-hmm"
    bad = subprocess.run(
        [sys.executable, "-m", "pcgen.cli", "import-hmm", str(tmp_path / "missing"), str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_device_and_bf16_emission():
    hmm = HMM.random(4, 16, seed=5)
    assert hmm.to("cpu") is hmm
    bf = hmm.emission_probs(torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and bf.shape == (4, 16)
    torch.testing.assert_close(bf.float(), hmm.emission_probs(), rtol=1e-2, atol=0)
    assert torch.equal(hmm.emission_t(), hmm.emission_probs().T)
