"""EM throughput (E-step tokens per second) against the matmul floor measured in the same run.

    python -m benchmarks.em [--seconds 5]

Per configuration: an HMM with H states over V = 50,257 tokens, batches of B random sequences of T = 32
tokens, the full E-step of distill.em (forward, backward, posteriors, expected transition and emission
counts). The floor is the cost of forward-backward (docs/method.md §8.4): 3 dense (B, H) x (H, H)
fp32 products per position, timed alone on the same device. The M-step (normalising the counts, once per
EM step, not per token) is timed separately. CPU rows always; H = 4096 on the GPU when CUDA is present.
Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._report import machine, table, write_section
from distill.counts import Counts, m_step
from distill.forward_backward import Prepared, e_step
from pc_core.hmm import HMM

V, T = 50257, 32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, seconds: float, min_reps: int = 2) -> float:
    """Seconds per call: one warm-up call, then repeat until `seconds` have passed (at least min_reps)."""
    fn()
    _sync(device)
    reps, began = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - began < seconds:
        fn()
        reps += 1
    _sync(device)
    return (time.perf_counter() - began) / reps


def measure(h: int, b: int, device: torch.device, seconds: float) -> list:
    gen = torch.Generator().manual_seed(0)
    hmm = HMM.random(h, V, seed=0, device=device)
    p = Prepared(hmm, device)
    x = torch.randint(V, (b, T), generator=gen).to(
        device
    )  # (B, T); the E-step cost does not depend on values
    counts = Counts(h, V, device)
    em_s = _timed(lambda: e_step(p, x, counts), device, seconds)

    left = torch.rand((b, h), generator=gen).to(device)  # (B, H)
    right = torch.rand((h, h), generator=gen).to(device)  # (H, H)

    def floor() -> None:
        for _ in range(3 * T):
            left @ right

    floor_s = _timed(floor, device, seconds)
    m_s = _timed(lambda: Prepared(m_step(hmm, counts, 1e-3, 1.0), device), device, seconds / 2, min_reps=1)
    tokens = b * T
    return [
        h,
        b,
        f"cpu, {torch.get_num_threads()} thread(s)"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device),
        round(tokens / em_s),
        round(tokens / floor_s),
        round(em_s / floor_s, 2),
        round(m_s, 3),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.em")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing budget per measurement")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="CPU threads"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    configs = [(h, b, n) for n in args.threads for h, b in ((256, 256), (1024, 128))]
    gpu_note = "H = 4096 on GPU: not measured (no CUDA device in this run)."
    if torch.cuda.is_available():
        gpu_note = ""
        configs.append((4096, 1024, None))
    rows = []
    for h, b, threads in configs:
        if threads:
            torch.set_num_threads(threads)
        rows.append(measure(h, b, torch.device("cuda" if threads is None else "cpu"), args.seconds))
        print(rows[-1], flush=True)
    headers = [
        "H",
        "batch B",
        "device",
        "EM tokens/s",
        "floor tokens/s",
        "EM time / floor",
        "M-step s (per EM step)",
    ]
    body = (
        "## EM (distill.em)\n\n"
        f"`python -m benchmarks.em --seconds {args.seconds:g} --threads {' '.join(map(str, args.threads))}`; E-step (forward-backward + expected counts) "
        f"over batches of B random sequences of T = {T} tokens, V = {V}. Floor: 3 dense (B, H) x (H, H) "
        f"fp32 products per token, timed alone on the same device and thread count (the CPU is shared with "
        f"other jobs, so compare EM with the floor of the same row); goal at H = 4096 on one H200: EM within "
        f"2x of it. {machine()}. {gpu_note}\n\n" + table(headers, rows)
    )
    print(body)
    write_section("benchmarks.md", "em", body)


if __name__ == "__main__":
    main()
