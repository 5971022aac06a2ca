"""`pcgen distill sample | lvd | train`, unchanged, on tiny Llama and Qwen2 models: a loadable HMM over the
tokenizer's vocabulary that guides generation on the same model."""

from __future__ import annotations

import pytest
from distill_support import run_cli
from model_families import build_family_lm

from distill import data
from pc_core import check_ids
from pc_core.decoding import generate
from pc_core.hmm import HMM
from pc_core.lm import load_lm
from pcgen.cli import main


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_sample_lvd_train_on_other_families(family, tmp_path):
    lm_dir = build_family_lm(family, tmp_path / family)
    model, tokenizer = load_lm(str(lm_dir), device="cpu")
    s, lvd, out = (str(tmp_path / d) for d in ("samples", "lvd", "hmm"))
    common = ["--device", "cpu"]
    sampled = run_cli(
        *["distill", "sample", "--lm", str(lm_dir), "--out", s, "--num-sequences", "96", "--seq-len", "12"],
        *["--shard-size", "48", "--batch-size", "16", "--save-embeddings", "64", *common],
    )
    assert "deprecated" not in sampled.stderr, sampled.stderr[-3000:]  # no transformers cache notices
    manifest = data.read_manifest(tmp_path / "samples")
    assert manifest["complete"] and manifest["vocab_size"] == len(tokenizer)
    assert manifest["embedding_dim"] == model.config.hidden_size
    assert main(["distill", "lvd", "--data", s, "--hidden-size", "8", "--out", lvd, *common]) == 0
    assert main(["distill", "train", "--init", lvd, "--data", s, "--out", out, "--steps", "2", *common]) == 0

    hmm = HMM.load(out)
    assert (hmm.hidden_size, hmm.vocab_size, hmm.eos_token_id) == (8, len(tokenizer), tokenizer.eos_token_id)
    assert hmm.metadata["source"] == "em" and hmm.metadata["tokenizer_fingerprint"]
    spec = {"keywords": ["dog"]}
    result = generate(model, tokenizer, hmm, spec, prompt="The", max_new_tokens=10, num_beams=2)
    assert all(check_ids(spec, tokenizer, seq.token_ids) for seq in result.sequences)
