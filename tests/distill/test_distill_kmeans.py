"""k-means backends: faiss and torch reach the same inertia up to k-means' own randomness."""

import pytest
import torch

from distill.errors import DistillError
from distill.kmeans import faiss_available, fit, nearest, resolve_backend

needs_faiss = pytest.mark.skipif(
    not faiss_available(), reason="faiss is not installed (pip install 'pcgen[faiss]')"
)


def _blobs(k: int, per: int, dim: int, seed: int) -> torch.Tensor:
    """k Gaussian blobs (unit noise) around well separated centres, (k*per, D)."""
    gen = torch.Generator().manual_seed(seed)
    centres = 12 * torch.randn((k, dim), generator=gen)
    return centres[torch.arange(k).repeat_interleave(per)] + torch.randn((k * per, dim), generator=gen)


@needs_faiss
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_faiss_and_torch_reach_the_same_inertia(init):
    """Structureless data (one Gaussian), where k-means' local optima differ by about 1 % from seed to seed:
    the two backends' median inertias over three seeds agree within 3 %, and both improve on the
    initial centroids by far more than that."""
    points = torch.randn((3000, 8), generator=torch.Generator().manual_seed(0))
    runs = {
        b: sorted(fit(points, 32, b, iters=25, seed=s, init=init)[1] for s in range(3))
        for b in ("torch", "faiss")
    }
    assert runs["faiss"][1] == pytest.approx(runs["torch"][1], rel=0.03), runs
    start = fit(points, 32, "torch", iters=0, seed=0, init=init)[1]  # the initial centroids' inertia
    assert max(runs["torch"] + runs["faiss"]) < 0.85 * start, (runs, start)


@needs_faiss
def test_faiss_inertia_is_measured_like_torch_and_deterministic():
    """fit's inertia is the sum of squared distances to the returned centroids, for either backend."""
    points = _blobs(k=8, per=50, dim=6, seed=1)
    centroids, inertia, backend = fit(points, 8, "faiss", iters=10, seed=4)
    assert backend == "faiss" and centroids.shape == (8, 6) and centroids.dtype == torch.float32
    brute = torch.cdist(points.double(), centroids.double()).min(1).values.pow(2).sum()
    assert inertia == pytest.approx(float(brute), rel=1e-5)
    again, inertia2, _ = fit(points, 8, "faiss", iters=10, seed=4)
    torch.testing.assert_close(centroids, again)
    assert inertia2 == inertia


def test_nearest_matches_brute_force():
    gen = torch.Generator().manual_seed(2)
    points, centroids = torch.randn((301, 5), generator=gen), torch.randn((7, 5), generator=gen)
    labels, dists = nearest(points, centroids, chunk=64)
    full = torch.cdist(points, centroids).pow(2)
    torch.testing.assert_close(dists, full.min(1).values, atol=1e-4, rtol=1e-4)
    assert bool((full.gather(1, labels[:, None]).squeeze(1) <= full.min(1).values + 1e-4).all())


def test_backend_names():
    assert resolve_backend("torch") == "torch"
    assert resolve_backend("auto") == ("faiss" if faiss_available() else "torch")
    with pytest.raises(DistillError, match="kmeans_backend"):
        resolve_backend("sklearn")
    with pytest.raises(DistillError, match="cannot make 9 clusters"):
        fit(torch.zeros((4, 2)), 9, "torch")
