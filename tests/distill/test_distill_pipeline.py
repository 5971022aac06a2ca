"""End to end: sample -> lvd -> train on a tiny GPT-2, the HMM guiding generation; `run --config`, also
under torchrun with two gloo processes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from distill_support import ROOT, cli_env

from distill import data
from pc_core.hmm import HMM
from pcgen.cli import main


def test_sample_lvd_train_then_guide(tiny_lm, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from pc_core import check_ids, compile_constraint
    from pc_core.guide import ConstraintGuide

    s, lvd, out = (str(tmp_path / d) for d in ("samples", "lvd", "hmm"))
    common = ["--device", "cpu"]
    assert (
        main(
            ["distill", "sample", "--lm", str(tiny_lm), "--out", s, "--num-sequences", "320"]
            + ["--seq-len", "16", "--shard-size", "128", "--save-embeddings", "200"]
            + common
        )
        == 0
    )
    assert main(["distill", "lvd", "--data", s, "--hidden-size", "12", "--out", lvd] + common) == 0
    assert main(["distill", "train", "--init", lvd, "--data", s, "--out", out, "--steps", "3"] + common) == 0
    hmm = HMM.load(out)
    assert (hmm.hidden_size, hmm.vocab_size, hmm.eos_token_id) == (12, len(tokenizer), tokenizer.eos_token_id)
    history = json.loads((tmp_path / "hmm" / "log.json").read_text())
    assert history[-1]["heldout_ll_per_token"] > history[0]["heldout_ll_per_token"] - 0.05

    # guided greedy decoding with the distilled HMM: the LM alone would not say "dog", the guide forces it
    constraint = {"keywords": ["dog"]}
    dfa = compile_constraint(constraint, tokenizer)
    horizon = 10
    guide = ConstraintGuide(hmm, dfa, horizon=horizon)
    assert -30 < float(guide.log_prob([])) < 0
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm)).eval()

    def lm_next(ids):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[tokenizer.eos_token_id, *ids]])).logits[0, -1]
        return torch.log_softmax(logits, -1)[: hmm.vocab_size]

    plain = []
    for _ in range(horizon):
        plain.append(int(lm_next(plain).argmax()))
    assert not check_ids(constraint, tokenizer, plain)  # unguided, the LM does not say it

    state, ids = guide.init_state(1), []
    for _ in range(horizon):
        score = lm_next(ids) + guide.next_log_probs(state)[0]
        token = int(score.argmax())
        ids.append(token)
        if token == tokenizer.eos_token_id:
            break
        state = guide.advance(state, [token])
    assert check_ids(constraint, tokenizer, ids), tokenizer.decode(ids)


def _config(root, tiny_lm, fmt="yaml"):
    config = {
        "lm": str(tiny_lm),
        "out": "run",
        "seed": 4,
        "device": "cpu",
        "sample": {
            "num_sequences": 96,
            "seq_len": 12,
            "shard_size": 32,
            "batch_size": 16,
            "save_embeddings": 64,
        },
        "lvd": {"hidden_size": 6, "kmeans_iters": 10},
        "em_sample": {"num_sequences": 128, "seq_len": 12, "shard_size": 32, "batch_size": 16},
        "train": {"steps": 3, "chunk_size": 64, "batch_size": 32, "heldout": 16},
    }
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "yaml":
        path = root / "distill.yaml"
        path.write_text(yaml.safe_dump(config))
    else:
        lines = [
            f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
            for k, v in config.items()
            if not isinstance(v, dict)
        ]
        for name, section in config.items():
            if isinstance(section, dict):
                lines.append(f"[{name}]")
                lines += [f"{k} = {v}" for k, v in section.items()]
        path = root / "distill.toml"
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_lm):
    """The pipeline in one process, from a TOML file."""
    root = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the per-test one_thread fixture
    try:
        assert main(["distill", "run", "--config", str(_config(root, tiny_lm, fmt="toml"))]) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def test_run_config_produces_every_stage_and_skips_them_after(single, tiny_lm, caplog):
    for stage in ("samples", "em-samples"):
        assert data.read_manifest(single / stage)["complete"]
    assert HMM.load(single / "lvd").metadata["source"] == "lvd"
    final = HMM.load(single / "hmm")
    assert final.metadata["source"] == "em" and final.hidden_size == 6
    assert final.metadata["data"] == str(single / "em-samples")  # EM on the fresh samples
    lvd_tokens, em_tokens = (data.load_tokens(single / d)[0] for d in ("samples", "em-samples"))
    assert (lvd_tokens[:32] != em_tokens[:32]).mean() > 0.5  # fresh: not the same draws again
    stamps = {p: p.stat().st_mtime_ns for p in single.rglob("*") if p.is_file()}
    caplog.set_level("INFO")
    assert main(["distill", "run", "--config", str(single.parent / "distill.toml")]) == 0
    assert {p: p.stat().st_mtime_ns for p in single.rglob("*") if p.is_file()} == stamps
    text = caplog.text
    assert "stage sample" in text and "complete, skipping" in text and "stage train: " in text


def test_torchrun_two_gloo_processes_match_one(single, tiny_lm, tmp_path):
    config = _config(tmp_path, tiny_lm)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "pcgen.cli", "distill", "run", "--config", str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "[rank 1]" in proc.stderr  # really two processes
    two = tmp_path / "run"
    # sampling: the shards were split over the ranks (file names carry the rank) and are identical
    files = sorted(p.name for p in (two / "samples").glob("tokens-*.npy"))
    assert files == ["tokens-00000-00000.npy", "tokens-00000-00002.npy", "tokens-00001-00001.npy"]
    for stage in ("samples", "em-samples"):
        np.testing.assert_array_equal(data.load_tokens(two / stage)[0], data.load_tokens(single / stage)[0])
    # LVD ran once (rank 0): same model; EM summed the counts over the two ranks: same to float tolerance
    torch.testing.assert_close(HMM.load(two / "lvd").log_emission, HMM.load(single / "lvd").log_emission)
    a, b = HMM.load(two / "hmm"), HMM.load(single / "hmm")
    for name in ("log_initial", "log_transition", "log_emission"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)
    logs = [json.loads((d / "hmm" / "log.json").read_text()) for d in (two, single)]
    for x, y in zip(*logs):
        assert x["heldout_ll_per_token"] == pytest.approx(y["heldout_ll_per_token"], abs=1e-6)
