"""Triton kernels against the torch reference, on CPU through the Triton interpreter."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton compiles anything

import pytest  # noqa: E402
import torch  # noqa: E402

from pc_core.kernels import reference  # noqa: E402

triton = pytest.importorskip("triton")


def _assert_same(a, b):
    assert torch.equal(torch.isneginf(a), torch.isneginf(b))
    finite = torch.isfinite(a)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("r, k, n", [(1, 7, 5), (5, 70, 130), (33, 64, 65)])
def test_log_matmul_exp_matches_reference(r, k, n):
    from pc_core.kernels.triton_log_matmul import log_matmul_exp

    gen = torch.Generator().manual_seed(r * 100 + k)
    left = torch.randn(r, k, generator=gen) * 30  # wide dynamic range: the max-shift matters
    left[0, : k // 2] = float("-inf")
    if r > 2:
        left[2] = float("-inf")  # an impossible row stays -inf
    right = torch.rand(k, n, generator=gen)
    _assert_same(log_matmul_exp(left, right), reference.log_matmul_exp(left, right))


def test_linear_matmul_exp_matches_reference():
    from pc_core.kernels.triton_log_matmul import matmul_exp

    gen = torch.Generator().manual_seed(1)
    left = torch.randn(6, 70, generator=gen) * 30
    left[1] = float("-inf")
    right_t = torch.rand(130, 70, generator=gen)
    got, got_shift = matmul_exp(left, right_t.T)
    want, want_shift = reference.matmul_exp_nt(left, right_t)
    torch.testing.assert_close(got_shift, want_shift)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert (got[1] == 0).all()


def test_edge_logsumexp_matches_reference():
    from pc_core.kernels.triton_edge_logsumexp import edge_logsumexp

    gen = torch.Generator().manual_seed(0)
    mass = torch.randn(11, 300, generator=gen)
    mass[10] = float("-inf")  # the padding row
    index = torch.tensor([[0, 1, 2, 10], [3, 4, 10, 10], [5, 6, 7, 8], [10, 10, 10, 10], [9, 10, 10, 10]])
    dst = torch.tensor([[1, 2, 3, 0], [0, 3, 0, 0], [1, 1, 2, 0], [0, 0, 0, 0], [4, 0, 0, 0]])
    values = torch.randn(5, 300, generator=gen) * 20
    values[3] = float("-inf")
    got = edge_logsumexp(mass, values, index, dst)
    want = reference.edge_logsumexp(mass, values, index, dst)
    _assert_same(got, want)
    assert torch.isneginf(got[3]).all()  # a state without edges
    brute = torch.logsumexp(torch.stack([mass[0] + values[1], mass[1] + values[2], mass[2] + values[3]]), 0)
    torch.testing.assert_close(want[0], brute)


def test_guide_with_triton_path_equals_torch_path(tokenizer, monkeypatch):
    from pc_core import compile_constraint
    from pc_core.guide import GUIDE_TABLES, ConstraintGuide
    from pc_core.hmm import HMM
    from pc_core.kernels import onednn_packed

    monkeypatch.setattr(
        onednn_packed, "pack", lambda right_t, pad=False: None
    )  # plain emission: the Triton product runs
    dfa = compile_constraint({"keywords": ["dog", "cat"]}, tokenizer)
    prefix = tokenizer.encode(" the dog", add_special_tokens=False)
    results = []
    for backend in ("torch", "triton"):
        monkeypatch.setenv("PCGEN_KERNELS", backend)
        GUIDE_TABLES.clear()
        hmm = HMM.random(16, len(tokenizer), seed=4, eos_token_id=tokenizer.eos_token_id)
        guide = ConstraintGuide(hmm, dfa, horizon=6)
        results.append((guide.tables.log_u.clone(), guide.next_log_probs(prefix), guide.log_prob(prefix)))
    for a, b in zip(results[0], results[1]):
        _assert_same(a, b)
