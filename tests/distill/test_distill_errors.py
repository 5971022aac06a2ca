"""Bad inputs give clear errors (DistillError, or exit status 2 with the message from the CLI)."""

import numpy as np
import pytest
from distill_support import hmm_data
from synthetic import write_dataset

from distill import data
from distill.em import TrainConfig, run_train
from distill.errors import DistillError
from distill.lvd import LVDConfig, run_lvd
from distill.pipeline import load_config
from distill.sample import SampleConfig, run_sample
from pc_core.errors import PcgenError
from pc_core.hmm import HMM
from pcgen.cli import main


@pytest.fixture
def dataset(tmp_path):
    return hmm_data(tmp_path / "d", HMM.random(4, 20, seed=1, eos_token_id=19), 90, 8, seed=2, shard_size=30)


def test_missing_shard(dataset):
    (dataset / data.read_manifest(dataset)["shards"][1]["file"]).unlink()
    with pytest.raises(DistillError, match=r"tokens-00000-00001\.npy: missing"):
        data.load_tokens(dataset)


def test_truncated_shard(dataset):
    path = dataset / data.read_manifest(dataset)["shards"][2]["file"]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DistillError, match="sha256 does not match.*truncated"):
        data.load_tokens(dataset)
    with pytest.raises(DistillError, match="truncated or not an .npy"):
        data.load_tokens(dataset, verify=False)


def test_shard_with_the_wrong_shape(dataset):
    entry = data.read_manifest(dataset)["shards"][0]
    sha = data.atomic_save_npy(dataset / entry["file"], np.zeros((30, 9), dtype=np.uint16))
    manifest = data.read_manifest(dataset)
    manifest["shards"][0]["sha256"] = sha
    data.atomic_write_json(dataset / data.MANIFEST, manifest)
    with pytest.raises(DistillError, match=r"holds uint16\[30, 9\], manifest.json says uint16\[30, 8\]"):
        data.load_tokens(dataset)


def test_incomplete_sampling(dataset):
    manifest = data.read_manifest(dataset)
    manifest["shards"] = manifest["shards"][:1]
    data.atomic_write_json(dataset / data.MANIFEST, manifest)
    with pytest.raises(
        DistillError, match=r"incomplete: 1 of 3 shards finished \(missing shard indices 1, 2\)"
    ):
        data.load_tokens(dataset)


def test_not_a_data_directory(tmp_path):
    with pytest.raises(DistillError, match="no manifest.json"):
        data.load_tokens(tmp_path)


def test_vocabulary_mismatch_between_data_and_hmm(dataset, tmp_path):
    HMM.random(4, 25, seed=0).save(tmp_path / "init")
    cfg = TrainConfig(init=str(tmp_path / "init"), data=str(dataset), out=str(tmp_path / "o"), device="cpu")
    with pytest.raises(DistillError, match="vocabulary mismatch: .* 20 tokens but the initial HMM .* has 25"):
        run_train(cfg)


def test_vocabulary_mismatch_between_data_and_lm(dataset, tiny_lm, tmp_path):
    """Resuming sampling into a directory sampled from another LM/tokenizer."""
    cfg = SampleConfig(
        lm=str(tiny_lm), out=str(dataset), num_sequences=90, seq_len=8, shard_size=30, device="cpu"
    )
    with pytest.raises(DistillError, match="vocabulary mismatch: .* 20 tokens"):
        run_sample(cfg)


def test_sample_settings_changed_on_resume(tiny_lm, tmp_path):
    cfg = SampleConfig(lm=str(tiny_lm), out=str(tmp_path / "s"), num_sequences=8, seq_len=4, device="cpu")
    run_sample(cfg)
    cfg.seq_len = 5
    with pytest.raises(DistillError, match=r"other settings: seq_len 5 \(was 4\)"):
        run_sample(cfg)


def test_lvd_without_embeddings_and_too_many_clusters(dataset, tmp_path):
    with pytest.raises(DistillError, match="no stored hidden states; sample with --save-embeddings"):
        run_lvd(LVDConfig(data=str(dataset), hidden_size=4, out=str(tmp_path / "l"), device="cpu"))
    tokens = np.zeros((2, 3), dtype=np.int64)
    write_dataset(tmp_path / "e", tokens, 5, 4, embeddings=np.zeros((2, 3, 2), dtype=np.float16))
    with pytest.raises(DistillError, match="cannot make 9 clusters from 6 vectors"):
        run_lvd(LVDConfig(data=str(tmp_path / "e"), hidden_size=10, out=str(tmp_path / "l"), device="cpu"))


@pytest.mark.parametrize("size", ["1", "0", "-3"])
def test_hidden_size_below_two_from_the_cli(dataset, tmp_path, capsys, size):
    code = main(
        ["distill", "lvd", "--data", str(dataset), "--hidden-size", size, "--out", str(tmp_path / "l")]
    )
    assert code == 2
    assert (
        f"hidden size must be >= 2 (H-1 clusters plus the reserved end state), got {size}"
        in capsys.readouterr().err
    )


def test_initial_hmm_with_one_state(dataset, tmp_path):
    h1 = HMM.random(2, 20, seed=0)
    h1.log_initial, h1.log_transition, h1.log_emission = (
        h1.log_initial[:1] * 0,
        h1.log_transition[:1, :1] * 0,
        h1.log_emission[:1],
    )
    h1.save(tmp_path / "h1")
    cfg = TrainConfig(init=str(tmp_path / "h1"), data=str(dataset), out=str(tmp_path / "o"), device="cpu")
    with pytest.raises(PcgenError, match="hidden size must be >= 2"):
        run_train(cfg)


def test_bad_train_settings(dataset, tmp_path):
    HMM.random(4, 20, seed=0).save(tmp_path / "init")
    for field, value, match in (("step_size", 1.5, "step_size"), ("pseudocount", 0.0, "pseudocount")):
        cfg = TrainConfig(
            init=str(tmp_path / "init"), data=str(dataset), out=str(tmp_path / "o"), device="cpu"
        )
        setattr(cfg, field, value)
        with pytest.raises(DistillError, match=match):
            run_train(cfg)


def test_bad_pipeline_configs(tmp_path):
    bad = tmp_path / "c.yaml"
    for text, match in (
        ("lm: x\nout: y\nsample: {}\nlvd: {}\ntrain: {}\nbogus: 1\n", "unknown keys \\['bogus'\\]"),
        ("lm: x\nsample: {}\nlvd: {}\ntrain: {}\n", "missing required key 'out'"),
        ("lm: x\nout: y\nsample: {}\ntrain: {}\n", "missing section 'lvd'"),
        ("[1, 2]\n", "expected a mapping"),
        ("lm: [unclosed\n", "cannot parse"),
    ):
        bad.write_text(text)
        with pytest.raises(DistillError, match=match):
            load_config(bad)
    with pytest.raises(DistillError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_pipeline_section_with_an_unknown_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "lm: x\nout: y\nsample: {num_sequences: 4, temperature: 0.7}\nlvd: {hidden_size: 4}\ntrain: {}\n"
    )
    assert main(["distill", "run", "--config", str(config)]) == 2
    assert "sample: unknown keys ['temperature']" in capsys.readouterr().err


def test_cli_defaults_match_the_config_dataclasses():
    """The flags and the YAML/TOML keys are one list: same names, same defaults."""
    import argparse
    import dataclasses

    from distill.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    stages = {"sample": SampleConfig, "lvd": LVDConfig, "train": TrainConfig}
    required = {"sample": ["--lm", "a", "--out", "b", "--num-sequences", "1"]}
    required["lvd"] = ["--data", "a", "--hidden-size", "2", "--out", "b"]
    required["train"] = ["--init", "a", "--data", "b", "--out", "c"]
    for stage, cls in stages.items():
        args = vars(parser.parse_args(["distill", stage, *required[stage]]))
        for field in dataclasses.fields(cls):
            assert field.name in args, (stage, field.name)
            if field.default is not dataclasses.MISSING:
                assert args[field.name] == field.default, (stage, field.name)
