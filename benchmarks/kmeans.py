"""k-means for LVD at GPT-2 Large's scale: torch against faiss, seconds per Lloyd iteration and final inertia.

    python -m benchmarks.kmeans [--points 200000] [--dim 1280] [--k 4095] [--iters 3]

The points are a seeded Gaussian mixture (k random centres, unit noise; float32), the size LVD clusters for
a 4,096-state HMM of GPT-2 Large. Both backends start from random points (`init="random"`: k-means++ is k
sequential passes over the data, the same for both, and too slow to include on two cores) and run `--iters`
Lloyd iterations; seconds per iteration is the training time over the iterations. The inertia of each result
is then measured the same way (distill.kmeans.nearest, not timed). Writes docs/benchmarks.md ("kmeans").
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._report import command, machine, table, write_section
from distill import kmeans as km


def points(n: int, dim: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn((k, dim), generator=gen)
    labels = torch.randint(k, (n,), generator=gen)
    return centres[labels] + torch.randn((n, dim), generator=gen)  # (n, D) float32


def run(backend: str, x: torch.Tensor, k: int, iters: int) -> list:
    began = time.perf_counter()
    if backend == "faiss":
        centroids = km.faiss_kmeans(x, k, iters, seed=0, init="random")
    else:
        centroids, _ = km.kmeans(x, k, iters, seed=0, init="random", tol=0.0)
    seconds = time.perf_counter() - began
    _, dists = km.nearest(x, centroids, 65536)
    return [backend, iters, round(seconds / iters, 2), f"{float(dists.double().sum()):.6g}"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kmeans")
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--k", type=int, default=4095)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    x = points(args.points, args.dim, args.k)
    backends = ["torch"] + (["faiss"] if km.faiss_available() else [])
    rows = []
    for backend in backends:
        rows.append(run(backend, x, args.k, args.iters))
        print(rows[-1], flush=True)
    flops = 2 * args.points * args.dim * args.k
    body = (
        "## k-means for LVD (distill.kmeans)\n\n"
        f"`{command()}`: {args.points:,} x {args.dim:,} float32 vectors (a Gaussian mixture) into {args.k:,} "
        f"centroids, random initial centroids, {args.iters} Lloyd iterations per backend; one iteration is "
        f"{flops / 1e12:.2f} TFLOP of distance products. {machine()}"
        + ("" if "faiss" in backends else "; faiss not installed (pip install 'pcgen[faiss]')")
        + ".\n\n"
        + table(["backend", "iterations", "seconds / iteration", "final inertia"], rows)
    )
    print(body)
    write_section("benchmarks.md", "kmeans", body)


if __name__ == "__main__":
    main()
