"""guide_ratio.log_: the vocabulary-wide log of a step's ratios, through numpy on a CPU: torch's values to
within a few ulp, its special values exactly, in place on strided views, without numpy warnings."""

import warnings

import torch

from pc_core.guide_ratio import log_


def _ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Between finite float32 values of one sign (the bit patterns are ordered like the values)."""
    return (a.view(torch.int32).long() - b.view(torch.int32).long()).abs()


def test_log_matches_torch_within_a_few_ulp():
    g = torch.Generator().manual_seed(0)
    # ratios in (0, 1] as a step makes them, some tiny (float32 subnormals included), some near 1
    x = torch.cat([torch.rand(50_000, generator=g), torch.rand(1000, generator=g) * 1e-39,
                   1 - torch.rand(1000, generator=g) * 1e-6, torch.tensor([1.0, 1e-45, 3.0e38])])  # fmt: skip
    expected = torch.log(x.double()).float()  # the exact log, rounded once
    got = log_(x.clone())
    assert got.dtype == torch.float32
    finite = torch.isfinite(expected)
    assert bool(finite.all())
    # sign by sign: where the log is 0 (x = 1) both give exactly 0
    assert bool((got[expected == 0] == 0).all())
    for sign in (expected > 0, expected < 0):
        assert int(_ulp_distance(got[sign], expected[sign]).max()) <= 4


def test_log_special_values_and_no_warnings():
    x = torch.tensor([0.0, -0.0, float("inf"), float("nan"), -1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's divide / invalid warnings would raise here
        got = log_(x.clone())
    expected = torch.log(x)
    same = (got == expected) | (torch.isnan(got) & torch.isnan(expected))
    assert bool(same.all()), (got, expected)


def test_log_in_place_on_a_strided_view():
    """A block's columns of a (B, V) output: the view is written in place, the rest left alone."""
    out = torch.rand(3, 10) + 0.5
    before = out.clone()
    view = out[:, 2:7]
    assert not view.is_contiguous()
    returned = log_(view)
    assert returned.data_ptr() == view.data_ptr()
    torch.testing.assert_close(out[:, 2:7], torch.log(before[:, 2:7]), rtol=1e-6, atol=0)
    assert torch.equal(out[:, :2], before[:, :2]) and torch.equal(out[:, 7:], before[:, 7:])


def test_log_of_other_dtypes_is_torch_s():
    x = torch.rand(100, dtype=torch.float64) + 0.1
    assert torch.equal(log_(x.clone()), torch.log(x))
