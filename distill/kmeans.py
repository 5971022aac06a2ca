"""k-means for LVD: faiss (CPU, or GPU when faiss was built with it) where installed, torch otherwise.

    centroids, inertia = fit(points, k, backend="auto", iters=30, seed=0, init="kmeans++")

Both backends run Lloyd iterations from a seeded initialisation (k-means++ or uniform random points); they
do not draw the same random numbers, so their centroids differ the way two seeds of one backend differ,
and their final inertia agrees up to that randomness (tests/distill/test_distill_kmeans.py compares them).
The inertia `fit` returns is always measured the same way, by `nearest` at the final centroids, so the two
backends' numbers are comparable.

The torch implementation computes distances block by block ((chunk, k) at a time) and runs on the points'
device. faiss is used through `faiss.Kmeans` with every point kept (faiss would otherwise subsample to 256
points per centroid: the caller already bounds the fit set, `kmeans_points`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distill.errors import DistillError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "faiss")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """auto -> faiss when importable, else torch; an explicit faiss without the package is an error."""
    if backend not in BACKENDS:
        raise DistillError(f"kmeans_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise DistillError("kmeans_backend faiss: faiss is not installed (pip install 'pcgen[faiss]')")
    return backend


def fit(
    points: torch.Tensor,
    k: int,
    backend: str = "auto",
    iters: int = 30,
    seed: int = 0,
    init: str = "kmeans++",
    chunk: int = 65536,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, float, str]:
    """k-means of points (M, D) float32. Returns centroids (k, D) on the points' device, the inertia at
    those centroids, and the backend that ran."""
    if k > points.shape[0]:
        raise DistillError(
            f"cannot make {k} clusters from {points.shape[0]} vectors; store more embeddings "
            "(--save-embeddings, or `pcgen distill embed --num-sequences`)"
        )
    backend = resolve_backend(backend)
    if backend == "faiss":
        centroids = faiss_kmeans(points, k, iters, seed, init)
    else:
        centroids, _ = kmeans(points, k, iters, seed, init, chunk, tol)
    _, dists = nearest(points, centroids, chunk)
    return centroids, float(dists.double().sum()), backend


# ---------------------------------------------------------------------------------------------- faiss


def faiss_kmeans(points: torch.Tensor, k: int, iters: int, seed: int, init: str) -> torch.Tensor:
    """faiss.Kmeans on every point; on the GPU when the points are on CUDA and faiss has GPUs."""
    import faiss

    x = np.ascontiguousarray(points.detach().float().cpu().numpy())  # (M, D) float32, what faiss takes
    m, d = x.shape
    options = dict(niter=max(iters, 1), seed=seed, max_points_per_centroid=-(-m // k) + 1, verbose=False)
    if points.is_cuda and faiss.get_num_gpus() > 0:
        options["gpu"] = True
    if init == "kmeans++" and hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        options["init_method"] = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
    km = faiss.Kmeans(d, k, **options)
    km.train(x)
    log.info("faiss k-means: %d iterations, objective %.6g", len(km.obj), km.obj[-1] if len(km.obj) else 0)
    return torch.from_numpy(np.array(km.centroids)).to(points.device)


# ---------------------------------------------------------------------------------------------- torch


def _sq_dist_to(points: torch.Tensor, sq_norms: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(M,) squared distances of every point to one centroid c (D,), without an (M, D) temporary."""
    return (sq_norms - 2 * (points @ c) + c @ c).clamp_min(0)


def nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (M,) and squared distance (M,), (chunk, k) distances at a time."""
    c_sq = (centroids * centroids).sum(1)  # (k,)
    labels, dists = [], []
    for start in range(0, points.shape[0], chunk):
        x = points[start : start + chunk]  # (n, D)
        d = c_sq[None, :] - 2 * (x @ centroids.T)  # (n, k): ||x - c||^2 - ||x||^2
        best, lab = d.min(1)
        labels.append(lab)
        dists.append((best + (x * x).sum(1)).clamp_min(0))
    return torch.cat(labels), torch.cat(dists)


def _draw(weights: torch.Tensor, gen: torch.Generator) -> int:
    """Index drawn with probability proportional to weights (M,); the random number comes from a CPU
    generator so the draw does not depend on the device."""
    cdf = weights.double().cumsum(0)
    u = torch.rand((), generator=gen, dtype=torch.float64).item() * float(cdf[-1])
    return min(
        int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype, device=cdf.device), right=True)),
        len(cdf) - 1,
    )


def _init(points: torch.Tensor, k: int, init: str, gen: torch.Generator) -> torch.Tensor:
    """k starting centroids (k, D): random points, or k-means++ (each new centroid drawn with probability
    proportional to the squared distance to the nearest one so far)."""
    m = points.shape[0]
    if init == "random":
        return points[torch.randperm(m, generator=gen)[:k].to(points.device)].clone()
    sq_norms = (points * points).sum(1)  # (M,)
    centroids = torch.empty((k, points.shape[1]), device=points.device, dtype=points.dtype)
    centroids[0] = points[int(torch.randint(m, (), generator=gen))]
    d2 = _sq_dist_to(points, sq_norms, centroids[0])  # (M,)
    for j in range(1, k):
        idx = _draw(d2, gen) if float(d2.sum()) > 0 else int(torch.randint(m, (), generator=gen))
        centroids[j] = points[idx]
        d2 = torch.minimum(d2, _sq_dist_to(points, sq_norms, centroids[j]))
    return centroids


def kmeans(
    points: torch.Tensor,
    k: int,
    iters: int = 30,
    seed: int = 0,
    init: str = "kmeans++",
    chunk: int = 65536,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, float]:
    """Lloyd's k-means on points (M, D) float32 in torch. Returns centroids (k, D) and the inertia of the
    last assignment step."""
    if k > points.shape[0]:
        raise DistillError(
            f"cannot make {k} clusters from {points.shape[0]} vectors; store more embeddings (--save-embeddings)"
        )
    centroids = _init(points, k, init, torch.Generator().manual_seed(seed))
    inertia = float("inf")
    for it in range(iters):
        labels, dists = nearest(points, centroids, chunk)
        new_inertia = float(dists.double().sum())
        counts = torch.bincount(labels, minlength=k)  # (k,)
        sums = torch.zeros_like(centroids, dtype=torch.float64)  # (k, D), float64 block by block
        for start in range(0, points.shape[0], chunk):
            sums.index_add_(0, labels[start : start + chunk], points[start : start + chunk].double())
        centroids = (sums / counts.clamp_min(1)[:, None]).to(points.dtype)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed empty clusters at the points worst served so far
            far = dists.topk(len(empty)).indices
            centroids[empty] = points[far]
        log.info(
            "k-means iteration %d: inertia %.6g, %d empty clusters re-seeded", it + 1, new_inertia, len(empty)
        )
        improved = (inertia - new_inertia) / max(abs(new_inertia), 1e-30)
        inertia = new_inertia
        if len(empty) == 0 and 0 <= improved < tol:
            break
    return centroids, inertia
