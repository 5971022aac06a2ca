"""pc_core.atomic_files, the one atomic writer behind the HMM checkpoints and every distillation output; and the
`pcgen distill` commands built by one helper."""

from __future__ import annotations

import json

import pytest

from pc_core.atomic_files import (
    atomic_open,
    atomic_path,
    atomic_write,
    atomic_write_json,
    remove_stale_temporaries,
)


def test_atomic_write_forms(tmp_path):
    assert atomic_write(tmp_path / "b", b"\x00\x01") == tmp_path / "b"
    atomic_write(tmp_path / "t", "héllo")
    atomic_write(tmp_path / "f", lambda fh: fh.write(b"from a writer"))
    atomic_write_json(tmp_path / "j.json", {"a": [1, 2]})
    with atomic_path(tmp_path / "p") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".p.") and tmp.name.endswith(".tmp")
        tmp.write_text("by name")
    assert (tmp_path / "b").read_bytes() == b"\x00\x01" and (tmp_path / "t").read_text("utf-8") == "héllo"
    assert (tmp_path / "f").read_bytes() == b"from a writer" and (tmp_path / "p").read_text() == "by name"
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [1, 2]}, indent=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "f", "j.json", "p", "t"]  # no temporaries


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x"
    target.write_text("old")

    def broken(fh):
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"new")
        raise RuntimeError
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".manifest.json.abc.tmp").write_text("killed writer")
    (tmp_path / "keep.tmp").write_text("not ours: no leading dot")
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tmp"]


def test_hmm_save_and_distill_data_use_it(tmp_path, monkeypatch):
    """HMM.save and the data directory writers go through pc_core.atomic_files (one implementation)."""
    import numpy as np

    from distill import data
    from pc_core import atomic_files as files
    from pc_core.hmm import HMM

    seen = []
    real = files.atomic_path

    def spy(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(files, "atomic_path", spy)
    monkeypatch.setattr("pc_core.hmm_checkpoint.atomic_path", spy)
    HMM.random(2, 5, seed=0).save(tmp_path / "hmm")
    data.atomic_save_npy(tmp_path / "a.npy", np.zeros(3))
    data.atomic_write_json(tmp_path / "m.json", {})
    assert seen == ["model.safetensors", "config.json", "a.npy", "m.json"]
    assert HMM.load(tmp_path / "hmm").vocab_size == 5


def test_stage_commands_share_one_pattern(monkeypatch):
    """cmd_sample / cmd_lvd / cmd_train: the config from the flags, the stage, the process group left."""
    import argparse

    from distill import cli, dist, em, lvd, sample

    calls = []
    monkeypatch.setattr(dist, "shutdown", lambda: calls.append("shutdown"))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    for module, runner, argv in (
        (
            sample,
            "run_sample",
            ["sample", "--lm", "m", "--out", "o", "--num-sequences", "3", "--dtype", "bf16"],
        ),
        (lvd, "run_lvd", ["lvd", "--data", "d", "--hidden-size", "4", "--out", "o"]),
        (em, "run_train", ["train", "--init", "i", "--data", "d", "--out", "o", "--steps", "2"]),
    ):
        monkeypatch.setattr(module, runner, lambda cfg: calls.append(cfg))
        args = parser.parse_args(["distill", *argv])
        assert args.func(args) == 0
    assert calls[0] == sample.SampleConfig(lm="m", out="o", num_sequences=3, dtype="bf16")
    assert calls[2] == lvd.LVDConfig(data="d", hidden_size=4, out="o")
    assert calls[4] == em.TrainConfig(init="i", data="d", out="o", steps=2)
    assert calls[1::2] == ["shutdown"] * 3

    def failing(cfg):
        raise sample.DistillError("bad")

    monkeypatch.setattr(sample, "run_sample", failing)
    args = parser.parse_args(["distill", "sample", "--lm", "m", "--out", "o", "--num-sequences", "1"])
    with pytest.raises(sample.DistillError):
        args.func(args)
    assert calls[-1] == "shutdown"  # left even when the stage fails
