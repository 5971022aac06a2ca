"""The CPU fast path of the emission product (oneDNN, packed once) against the plain torch product."""

import pytest
import torch

from pc_core import compile_constraint
from pc_core.guide import ConstraintGuide
from pc_core.hmm import HMM
from pc_core.kernels import onednn_packed, reference

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 9])  # below MIN_ROWS the left side is padded
def test_packed_product_equals_plain_product(rows):
    gen = torch.Generator().manual_seed(rows)
    right_t = torch.rand(300, 64, generator=gen)  # (N, K)
    left = torch.randn(rows, 64, generator=gen) * 30  # log space, wide range
    left[0, :20] = float("-inf")
    packed = onednn_packed.pack(right_t)
    assert packed is not None  # the pinned torch has the ops: a silent fallback would hide a 2-3x slowdown
    got = reference.log_matmul_exp_nt(left, packed)
    want = reference.log_matmul_exp_nt(left, right_t)
    assert got.shape == (rows, 300)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_bf16_matches_fp32_within_bf16_rounding():
    gen = torch.Generator().manual_seed(0)
    right_t = torch.rand(200, 48, generator=gen)
    left = torch.randn(5, 48, generator=gen)
    packed = onednn_packed.pack(right_t.bfloat16())
    if packed is None:  # CPUs without bf16 support in oneDNN: callers keep the plain product
        pytest.skip("oneDNN cannot pack bfloat16 on this CPU")
    got = reference.log_matmul_exp_nt(left, packed)
    torch.testing.assert_close(got, reference.log_matmul_exp_nt(left, right_t), rtol=0, atol=2e-2)


def test_pack_declines_what_it_cannot_pack():
    assert onednn_packed.pack(torch.rand(4, 4, dtype=torch.float64)) is None


def test_guide_step_same_with_and_without_packed_emission(tokenizer, monkeypatch):
    dfa = compile_constraint({"keywords": ["dog", "cat"]}, tokenizer)
    prefix = tokenizer.encode(" the dog", add_special_tokens=False)
    results = []
    for packing in (True, False):
        if not packing:
            monkeypatch.setattr(onednn_packed, "pack", lambda right_t: None)
        hmm = HMM.random(16, len(tokenizer), seed=2, eos_token_id=tokenizer.eos_token_id)
        guide = ConstraintGuide(hmm, dfa, horizon=6)
        state = guide.advance(guide.init_state(3), prefix[:1] * 3)
        results.append(guide.next_log_probs(state))
        right = hmm.emission_block(None, "all")
        assert isinstance(right, onednn_packed.Packed) == packing
    packed, plain = results
    assert torch.equal(torch.isneginf(packed), torch.isneginf(plain))
    finite = torch.isfinite(plain)
    torch.testing.assert_close(packed[finite], plain[finite], rtol=1e-5, atol=1e-5)


def test_padded_matrices_give_the_same_product_and_few_shapes():
    """A guide's own tokens are packed padded (oneDNN caches a kernel per shape): the product is unchanged and
    the padded sizes of all N up to a 128k vocabulary are few."""
    torch.manual_seed(0)
    for n in (1, 63, 65, 300, 1000):
        right_t = torch.rand(n, 16)
        packed = onednn_packed.pack(right_t, pad=True)
        if packed is None:
            pytest.skip("oneDNN packing is unavailable here")
        left = torch.rand(3, 16)
        out = onednn_packed.matmul_nt(left, packed)
        assert out.shape == (3, n)
        torch.testing.assert_close(out, left @ right_t.T, rtol=1e-5, atol=1e-5)
    sizes = {onednn_packed.padded_size(n) for n in range(1, 128_257)}
    assert len(sizes) <= 4 * 17 + 1
    assert all(n <= onednn_packed.padded_size(n) <= max(64, 1.25 * n) for n in range(1, 5000))
