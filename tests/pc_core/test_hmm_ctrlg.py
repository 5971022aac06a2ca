"""Ctrl-G checkpoints in the layout of ctrlg/hmm_tulu2-7b_writing-prompts_32768 (32,768 states over Llama-2's
32,000 tokens, EOS 2), at a small size: the fields, shapes and spaces of joshuacnf/Ctrl-G's ctrlg/hmm.py
(alpha_exp (H, H) softmax rows, beta (H, V) log-softmax rows, gamma (H,) log-softmax; config.json with
hidden_states, vocab_size, eos_token_id), imported by HMM.load and `pcgen import-hmm` and compared with the
source parameters."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import pc_core.hmm_ctrlg as ctrlg_module
from pc_core.errors import HMMFormatError
from pc_core.hmm import HMM

H, V, EOS = 64, 320, 2  # Llama-2's layout: <unk> <s> </s> at 0..2, EOS = </s> = 2


def tulu2_layout(seed: int = 0) -> dict[str, torch.Tensor]:
    """Ctrl-G's parameters, with the reference convention that state H-1 is absorbing and emits only EOS
    (exact zeros elsewhere, which the import floors)."""
    gen = torch.Generator().manual_seed(seed)
    alpha_exp = torch.softmax(torch.randn(H, H, generator=gen) * 2, dim=1)
    alpha_exp[-1] = 0.0
    alpha_exp[-1, -1] = 1.0
    beta = torch.log_softmax(torch.randn(H, V, generator=gen) * 2, dim=1)
    beta[-1] = float("-inf")
    beta[-1, EOS] = 0.0
    gamma = torch.log_softmax(torch.randn(H, generator=gen), dim=0)
    return {"alpha_exp": alpha_exp, "beta": beta, "gamma": gamma}


def write_ctrlg(path, params, torch_file: bool = False, config: dict | None = None):
    path.mkdir(parents=True)
    config = config or {"hidden_states": H, "vocab_size": V, "eos_token_id": EOS}
    (path / "config.json").write_text(json.dumps(config))
    if torch_file:  # PyTorchModelHubMixin before huggingface_hub 0.21: the state dict in a torch file
        torch.save(params, path / "pytorch_model.bin")
    else:
        save_file(params, str(path / "model.safetensors"))
    return path


def assert_matches_source(hmm: HMM, params: dict[str, torch.Tensor]) -> None:
    assert (hmm.hidden_size, hmm.vocab_size, hmm.eos_token_id) == (H, V, EOS)
    close = lambda got, want: torch.testing.assert_close(got.double(), want.double(), atol=1e-6, rtol=1e-5)
    close(hmm.log_transition.exp(), params["alpha_exp"])
    close(hmm.log_emission.exp(), params["beta"].exp())
    close(hmm.log_initial.exp(), params["gamma"].reshape(-1).exp())
    # the end state: exact zeros floored (finite logs), its mass on EOS
    assert torch.isfinite(hmm.log_emission).all() and torch.isfinite(hmm.log_transition).all()
    assert hmm.log_emission[-1, EOS] > -1e-6 and hmm.log_transition[-1, -1] > -1e-6


def test_tulu2_layout_imports(tmp_path):
    params = tulu2_layout()
    hmm = HMM.load(write_ctrlg(tmp_path / "ctrlg", params))
    assert_matches_source(hmm, params)
    assert hmm.metadata["imported_from"] == "ctrl-g"
    # the same numbers as normalising the whole tensors at once (HMM.from_probs)
    whole = HMM.from_probs(params["gamma"].double().exp(), params["alpha_exp"], params["beta"].double().exp())
    assert torch.equal(hmm.log_emission, whole.log_emission)
    assert torch.equal(hmm.log_transition, whole.log_transition)
    assert torch.equal(hmm.log_initial, whole.log_initial)


def test_tulu2_layout_from_a_torch_file_with_gamma_as_a_row(tmp_path):
    params = tulu2_layout(seed=1)
    params["gamma"] = params["gamma"].reshape(1, H).clone()
    hmm = HMM.load(write_ctrlg(tmp_path / "ctrlg", params, torch_file=True))
    assert_matches_source(hmm, params)


def test_block_wise_conversion_equals_the_whole(tmp_path, monkeypatch):
    """Rows are converted a block at a time (128 MiB of float64 each at full size); with 5 rows per block the
    64 rows take 13 blocks, the last one short, and give the numbers of one block."""
    params = tulu2_layout(seed=2)
    path = write_ctrlg(tmp_path / "ctrlg", params)
    whole = HMM.load(path)
    monkeypatch.setattr(ctrlg_module, "CTRLG_BLOCK_BYTES", 8 * V * 5)
    blocks = HMM.load(path)
    for name in ("log_initial", "log_transition", "log_emission"):
        assert torch.equal(getattr(blocks, name), getattr(whole, name)), name


def test_import_hmm_cli_converts_the_tulu2_layout(tmp_path):
    params = tulu2_layout(seed=3)
    src = write_ctrlg(tmp_path / "src", params)
    out = subprocess.run(
        [sys.executable, "-m", "pcgen.cli", "import-hmm", str(src), str(tmp_path / "dst")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"hidden_size={H} vocab_size={V} eos={EOS}" in out.stdout
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["format"] == "pcgen-hmm"
    converted = HMM.load(tmp_path / "dst")
    assert_matches_source(converted, params)
    assert torch.equal(converted.log_emission, HMM.load(src).log_emission)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, c: p.update(beta=p["beta"][:, :-1].contiguous()), r"beta has shape \(64, 319\)"),
        (lambda p, c: p.update(alpha_exp=p["alpha_exp"][:-1].contiguous()), "alpha_exp has shape"),
        (lambda p, c: p.update(gamma=p["gamma"][:-1].contiguous()), "gamma has shape"),
        (lambda p, c: c.update(hidden_states=32), r"config.json \(hidden_states=32"),
        (lambda p, c: p.pop("gamma"), "missing tensors"),
        (lambda p, c: c.update(eos_token_id=V), "eos_token_id 320 is outside"),
    ],
)
def test_malformed_ctrlg_checkpoints_name_the_problem(tmp_path, change, message):
    params = tulu2_layout(seed=4)
    config = {"hidden_states": H, "vocab_size": V, "eos_token_id": EOS}
    change(params, config)
    path = write_ctrlg(tmp_path / "bad", params, config=config)
    with pytest.raises(HMMFormatError, match=message):
        HMM.load(path)


def test_unreadable_ctrlg_weights(tmp_path):
    path = write_ctrlg(tmp_path / "cut", tulu2_layout())
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HMMFormatError, match="not a readable safetensors"):
        HMM.load(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(HMMFormatError, match="missing model.safetensors"):
        HMM.load(path)


def test_imported_hmm_guides_a_llama2_vocabulary(tmp_path):
    """A Ctrl-G HMM over a Llama-2-style vocabulary (specials at 0..2, EOS 2, byte fallback), imported and
    used by the guide: q(x) is exactly 0 where the constraint cannot be met and positive elsewhere."""
    from tokenizer_families import build_llama2

    from pc_core.constraints import compile_constraint
    from pc_core.guide import ConstraintGuide

    tokenizer = build_llama2(tmp_path / "tok")
    assert tokenizer.eos_token_id == EOS and tokenizer.convert_ids_to_tokens([0, 1, 2]) == [
        "<unk>",
        "<s>",
        "</s>",
    ]
    v = len(tokenizer)
    gen = torch.Generator().manual_seed(5)
    params = {
        "alpha_exp": torch.softmax(torch.randn(16, 16, generator=gen), dim=1),
        "beta": torch.log_softmax(torch.randn(16, v, generator=gen), dim=1),
        "gamma": torch.log_softmax(torch.randn(16, generator=gen), dim=0),
    }
    path = write_ctrlg(
        tmp_path / "ctrlg", params, config={"hidden_states": 16, "vocab_size": v, "eos_token_id": 2}
    )
    hmm = HMM.load(path)
    dfa = compile_constraint({"keywords": ["dog"]}, tokenizer)
    guide = ConstraintGuide(hmm, dfa, horizon=4)
    q = guide.next_log_probs(guide.init_state(1))[0]  # (V,)
    assert q[EOS] == float("-inf")  # ending now leaves "dog" unwritten
    dog = tokenizer.encode(" dog", add_special_tokens=False)
    assert len(dog) == 1 and torch.isfinite(q[dog[0]])
