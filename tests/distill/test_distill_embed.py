"""`pcgen distill embed`: batched prefill gives the hidden states the sampler stores, resumably."""

import json
import shutil

import numpy as np
import pytest
from distill_support import cli_in_process, kill_when, pcgen

from distill import data
from distill.embed import EmbedConfig, run_embed
from distill.errors import DistillError
from distill.lvd import LVDConfig, run_lvd
from distill.sample import SampleConfig, run_sample


def _sample(tiny_lm, out, **kw):
    base = dict(lm=str(tiny_lm), out=str(out), num_sequences=40, seq_len=12, batch_size=8, shard_size=16)
    return run_sample(SampleConfig(**{**base, **kw}, device="cpu"))


def _vectors(directory):
    """Every stored hidden state, (K, T, D), over all shards."""
    return np.concatenate([vectors for _, vectors in data.Embedded(directory).chunks(1000)])


def _until_eos(tokens, eos):
    """Per row, the positions up to and including the first EOS (what LVD reads from the hidden states)."""
    return [int(np.argmax(row == eos)) + 1 if (row == eos).any() else len(row) for row in tokens]


@pytest.mark.parametrize("prompted", [False, True])
def test_embed_equals_the_hidden_states_sampling_stores(tiny_lm, tokenizer, tmp_path, prompted):
    """Same samples twice: once with --save-embeddings, once without and then embedded by prefill (batch
    size 5, so blocks straddle shards and mix prompt lengths): the hidden states agree."""
    extra = {}
    if prompted:
        (tmp_path / "p.txt").write_text("The dog caught a frisbee in the\nA cat\nBirds fly over\n")
        extra = {"prompts": str(tmp_path / "p.txt")}
    _sample(tiny_lm, tmp_path / "with", save_embeddings=20, **extra)
    _sample(tiny_lm, tmp_path / "without", **extra)
    manifest = run_embed(EmbedConfig(lm=str(tiny_lm), data=str(tmp_path / "without"), num_sequences=20,
                                     batch_size=5, device="cpu"))  # fmt: skip
    assert manifest["embedding_dim"] == 32 and manifest["embed"]["num_sequences"] == 20
    assert [e["embeddings"] and e["embeddings"]["num_sequences"] for e in manifest["shards"]] == [16, 4, None]
    assert not list((tmp_path / "without").glob("embed-rank-*"))
    want, got = data.Embedded(tmp_path / "with"), data.Embedded(tmp_path / "without")
    np.testing.assert_array_equal(want.tokens, got.tokens)
    a, b = _vectors(tmp_path / "with"), _vectors(tmp_path / "without")
    for row, stop in enumerate(_until_eos(want.tokens, tokenizer.eos_token_id)):
        np.testing.assert_allclose(b[row, :stop], a[row, :stop], atol=3e-3)
    lvd = run_lvd(LVDConfig(data=str(tmp_path / "without"), hidden_size=6, out=str(tmp_path / "lvd"),
                            kmeans_iters=5, device="cpu"))  # fmt: skip
    assert lvd.hidden_size == 6


def test_embed_killed_resumes_and_other_settings_are_refused(tiny_lm, tmp_path, caplog, capsys):
    samples = tmp_path / "s"
    _sample(tiny_lm, samples, num_sequences=160, shard_size=8)  # 20 shards (the kill lands among them)
    args = [
        "distill",
        "embed",
        "--lm",
        str(tiny_lm),
        "--data",
        str(samples),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    part = samples / "embed-rank-00000.json"
    kill_when(pcgen(*args), lambda: part.exists() and len(json.loads(part.read_text())) >= 2)
    done = [e["index"] for e in json.loads(part.read_text())]
    assert 2 <= len(done) < 20
    code, resumed = cli_in_process(caplog, capsys, *args)
    assert code == 0
    for index in done:
        assert f"shard {index}: hidden states finished earlier, skipping" in resumed
    reference = tmp_path / "ref"
    shutil.copytree(samples, reference, ignore=shutil.ignore_patterns("embed*", "embeddings*"))
    manifest = json.loads((reference / "manifest.json").read_text())
    for entry in manifest["shards"]:
        entry["embeddings"] = None
    manifest.pop("embed"), manifest.update(embedding_dim=None)
    (reference / "manifest.json").write_text(json.dumps(manifest))
    run_embed(EmbedConfig(lm=str(tiny_lm), data=str(reference), batch_size=7, device="cpu"))
    np.testing.assert_allclose(_vectors(samples), _vectors(reference), atol=3e-3)
    with pytest.raises(DistillError, match="other settings"):
        run_embed(EmbedConfig(lm=str(tiny_lm), data=str(samples), embedding_layer=1, device="cpu"))


def test_embed_refuses_another_tokenizer_and_incomplete_samples(tiny_lm, tmp_path):
    from tiny_models import build_tiny_lm, build_tokenizer

    _sample(tiny_lm, tmp_path / "s", num_sequences=8)
    build_tiny_lm(tmp_path / "other", build_tokenizer(tmp_path / "tok", vocab_size=600))
    with pytest.raises(DistillError, match="another tokenizer"):
        run_embed(EmbedConfig(lm=str(tmp_path / "other"), data=str(tmp_path / "s"), device="cpu"))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["shards"] = []
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DistillError, match="incomplete"):
        run_embed(EmbedConfig(lm=str(tiny_lm), data=str(tmp_path / "s"), device="cpu"))


def test_torchrun_two_gloo_processes_embed_like_one(tiny_lm, tmp_path):
    import subprocess
    import sys

    from distill_support import ROOT, cli_env

    _sample(tiny_lm, tmp_path / "one", num_sequences=48, shard_size=16)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    run_embed(EmbedConfig(lm=str(tiny_lm), data=str(tmp_path / "one"), device="cpu"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "pcgen.cli", "distill", "embed", "--lm", str(tiny_lm), "--data", str(tmp_path / "two"), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    files = sorted(p.name for p in (tmp_path / "two").glob("embeddings-*.npy"))
    assert files == ["embeddings-00000-00000.npy", "embeddings-00000-00002.npy", "embeddings-00001-00001.npy"]
    assert not list((tmp_path / "two").glob("embed-rank-*"))
    np.testing.assert_allclose(_vectors(tmp_path / "two"), _vectors(tmp_path / "one"), atol=1e-5)
