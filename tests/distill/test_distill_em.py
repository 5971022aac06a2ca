"""EM: exact expected counts, monotone full-batch EM that recovers a known HMM, the schedules."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from distill_support import hmm_data, per_token_ll

from distill.counts import Counts, m_step
from distill.em import TrainConfig, run_train
from distill.forward_backward import Prepared, e_step, log_likelihood
from pc_core.hmm import HMM


def test_e_step_matches_enumeration():
    """Expected counts and log P(x) against a sum over every hidden path (float64)."""
    h, v, t_len = 3, 5, 4
    hmm = HMM.random(h, v, seed=1)
    pi, a, b = (t.double().exp() for t in (hmm.log_initial, hmm.log_transition, hmm.log_emission))
    x = torch.tensor([[0, 2, 1, 4], [3, 3, 0, 2], [1, 1, 1, 1]])
    counts = Counts(h, v)
    ll = e_step(Prepared(hmm, "cpu"), x, counts)
    want = Counts(h, v)
    for row, got_ll in zip(x.tolist(), ll.tolist()):
        joint = {}
        for zs in itertools.product(range(h), repeat=t_len):
            p = pi[zs[0]] * b[zs[0], row[0]]
            for t in range(1, t_len):
                p = p * a[zs[t - 1], zs[t]] * b[zs[t], row[t]]
            joint[zs] = p
        total = sum(joint.values())
        assert got_ll == pytest.approx(math.log(total), abs=1e-5)
        for zs, p in joint.items():
            w = p / total
            want.initial[zs[0]] += w
            for t in range(t_len):
                want.emission[row[t], zs[t]] += w
                if t:
                    want.transition[zs[t - 1], zs[t]] += w
    for got, ref in zip(counts.tensors(), want.tensors()):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_likelihood(Prepared(hmm, "cpu"), x), ll)


def test_e_step_survives_long_improbable_sequences():
    """Log space with max-shift: a 64-token sequence of improbable tokens (P ~ e^-600) stays finite."""
    hmm = HMM.random(6, 50, seed=2, concentration=4.0)
    rare = hmm.log_emission.max(0).values.argsort()[:3]  # the three least likely tokens overall
    x = rare[torch.arange(64) % 3][None, :].repeat(2, 1)
    counts = Counts(6, 50)
    ll = e_step(Prepared(hmm, "cpu"), x, counts)
    assert torch.isfinite(ll).all() and float(ll[0]) < -300  # far below float32's range (e^-87)
    assert all(torch.isfinite(c).all() for c in counts.tensors())
    assert float(counts.initial.sum()) == pytest.approx(2, rel=1e-5)
    assert float(counts.transition.sum()) == pytest.approx(2 * 63, rel=1e-4)


def test_m_step_pseudocount_keeps_every_entry_positive():
    counts = Counts(3, 7)
    counts.emission[2, 0] = 10.0  # one token seen, the rest never
    counts.transition[0, 1] = 5.0
    hmm = m_step(HMM.random(3, 7), counts, pseudocount=1e-3, step_size=1.0)
    hmm.validate()  # rows sum to 1, nothing -inf
    assert float(hmm.log_emission[0, 2].exp()) == pytest.approx((10 + 1e-3) / (10 + 7e-3), rel=1e-6)
    assert float(hmm.log_emission.exp().min()) > 0


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    root = tmp_path_factory.mktemp("em_truth")
    true = HMM.random(4, 16, seed=1, concentration=2.0, eos_token_id=15)
    train = hmm_data(root / "train", true, 2000, 16, seed=2, shard_size=700)
    heldout = hmm_data(root / "heldout", true, 1000, 16, seed=3)
    init = root / "init"
    HMM.random(4, 16, seed=7, eos_token_id=15).save(init)
    return true, train, heldout, init


def test_full_batch_em_is_monotone_and_reaches_the_true_likelihood(truth, tmp_path):
    true, train, heldout, init = truth
    cfg = TrainConfig(
        init=str(init),
        data=str(train),
        out=str(tmp_path / "out"),
        steps=40,
        heldout_data=str(heldout),
        plot=False,
        device="cpu",
    )
    hmm = run_train(cfg)
    history = json.loads((tmp_path / "out" / "log.json").read_text())
    assert [r["step"] for r in history] == list(range(41))
    train_ll = np.array([r["train_ll_per_token"] for r in history[1:]])
    # MAP-EM with a 1e-3 pseudocount: the likelihood itself may only dip by float noise
    assert np.diff(train_ll).min() > -1e-6, np.diff(train_ll)
    true_ll = per_token_ll(true, heldout)
    assert history[0]["heldout_ll_per_token"] < true_ll - 0.3  # the random start is far off
    assert history[-1]["heldout_ll_per_token"] > true_ll - 0.01
    loaded = HMM.load(tmp_path / "out")  # the final model in HMM.load's layout
    assert torch.equal(loaded.log_emission, hmm.log_emission)
    assert loaded.metadata["source"] == "em" and loaded.eos_token_id == 15


def test_chunked_step_size_em_improves(truth, tmp_path):
    true, train, heldout, init = truth
    cfg = TrainConfig(
        init=str(init),
        data=str(train),
        out=str(tmp_path / "out"),
        steps=6,
        chunk_size=500,
        step_size=0.5,
        batch_size=128,
        heldout=200,
        device="cpu",
    )
    run_train(cfg)
    history = json.loads((tmp_path / "out" / "log.json").read_text())
    # the last 200 sequences are held out; one pass over the other 1800 is 4 chunks: 500, 500, 500, 300
    assert [r["tokens"] for r in history[1:]] == [t * 16 for t in (500, 500, 500, 300, 500, 500)]
    assert history[-1]["heldout_ll_per_token"] > history[0]["heldout_ll_per_token"] + 0.2
    assert (tmp_path / "out" / "curve.png").stat().st_size > 1000
    assert (tmp_path / "out" / "log.csv").read_text().count("\n") == 8  # header + steps 0..6
    assert len(list((tmp_path / "out" / "checkpoints").iterdir())) == 2  # keep_checkpoints
