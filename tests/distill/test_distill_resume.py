"""Kill and resume: SIGKILLed runs, rerun with the same command, equal the uninterrupted ones."""

import json
import shutil

import numpy as np
import torch
from distill_support import cli_in_process, hmm_data, kill_when, pcgen

from distill import data
from distill.em import TrainConfig, run_train
from distill.sample import SampleConfig, run_sample
from pc_core.hmm import HMM


def _checkpoint_exists(out, step):
    return lambda: (out / "checkpoints" / f"step-{step:06d}").exists()


def test_training_killed_twice_and_resumed_equals_uninterrupted(tmp_path, caplog, capsys):
    true = HMM.random(8, 64, seed=11, concentration=2.0, eos_token_id=63)
    train = hmm_data(tmp_path / "data", true, 2000, 16, seed=12, shard_size=600)
    init = tmp_path / "init"
    HMM.random(8, 64, seed=13, eos_token_id=63).save(init)
    # chunked step-size EM: the chunk order (seeded permutations, three passes) must survive the restarts
    flags = dict(steps=12, chunk_size=500, step_size=0.7, batch_size=128, heldout=100, seed=5)
    args = ["distill", "train", "--init", str(init), "--data", str(train)]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    out = tmp_path / "killed"
    cmd = pcgen(*args, "--out", str(out), "--device", "cpu")
    kill_when(cmd, _checkpoint_exists(out, 3))
    assert not (out / "model.safetensors").exists()
    kill_when(cmd, _checkpoint_exists(out, 7))  # the second run resumed from step >= 3
    code, resumed = cli_in_process(caplog, capsys, *cmd[3:])  # the same command, run to the end
    assert code == 0 and "resuming" in resumed

    reference = run_train(
        TrainConfig(init=str(init), data=str(train), out=str(tmp_path / "straight"), device="cpu", **flags)
    )
    final = HMM.load(out)
    for name in ("log_initial", "log_transition", "log_emission"):
        assert torch.equal(getattr(final, name), getattr(reference, name)), name
    logs = [json.loads((d / "log.json").read_text()) for d in (out, tmp_path / "straight")]
    keys = ("step", "train_ll_per_token", "heldout_ll_per_token", "tokens")
    assert [[r[k] for k in keys] for r in logs[0][1:]] == [[r[k] for k in keys] for r in logs[1][1:]]
    assert logs[0][-1]["step"] == 12 and (out / "curve.png").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000011", "step-000012"]

    # rerunning a finished run changes nothing; other settings in the same --out are refused
    code, again = cli_in_process(caplog, capsys, *cmd[3:])
    assert (
        code == 0 and torch.equal(HMM.load(out).log_emission, final.log_emission) and "step 13" not in again
    )
    code, refused = cli_in_process(caplog, capsys, *cmd[3:], "--pseudocount", "0.01")
    assert code == 2 and "other settings (pseudocount" in refused


def test_sampling_killed_skips_finished_shards_and_matches(tiny_lm, tmp_path, caplog, capsys):
    # 40 small shards: the kill lands among many shard boundaries, for half the tokens of 40 shards of 32
    flags = dict(num_sequences=640, seq_len=16, shard_size=16, batch_size=16, seed=3)
    out = tmp_path / "killed"
    args = ["distill", "sample", "--lm", str(tiny_lm), "--out", str(out), "--device", "cpu"]
    for key, value in flags.items():
        args += [f"--{key.replace('_', '-')}", str(value)]

    def three_shards():
        part = out / data.part_file(0)
        return part.exists() and len(json.loads(part.read_text())) >= 3

    kill_when(pcgen(*args), three_shards)
    done = data.finished_shards(out)
    assert 3 <= len(done) < 40
    stamps = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in done.values()}
    code, resumed = cli_in_process(caplog, capsys, *args)
    assert code == 0
    for index in done:
        assert f"shard {index}: finished earlier, skipping" in resumed
    assert all((out / f).stat().st_mtime_ns == t for f, t in stamps.items())  # not rewritten

    run_sample(SampleConfig(lm=str(tiny_lm), out=str(tmp_path / "straight"), device="cpu", **flags))
    got, manifest = data.load_tokens(out)
    want, reference = data.load_tokens(tmp_path / "straight")
    np.testing.assert_array_equal(got, want)
    assert [e["sha256"] for e in manifest["shards"]] == [e["sha256"] for e in reference["shards"]]
    assert manifest["complete"] and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_sampling_resamples_a_lost_shard(tiny_lm, tmp_path):
    cfg = SampleConfig(
        lm=str(tiny_lm), out=str(tmp_path / "s"), num_sequences=48, seq_len=8, shard_size=16, device="cpu"
    )
    run_sample(cfg)
    before, manifest = data.load_tokens(tmp_path / "s")
    lost = tmp_path / "s" / manifest["shards"][1]["file"]
    shutil.copy(lost, tmp_path / "copy.npy")
    lost.write_bytes(lost.read_bytes()[:100])  # truncated by a crash of the filesystem, say
    run_sample(cfg)
    after, _ = data.load_tokens(tmp_path / "s")
    np.testing.assert_array_equal(before, after)
