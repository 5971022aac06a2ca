"""Cost of the guide's emission product against its row count: why a step costs more than its floor.

    python -m benchmarks.row_product [--hidden 4096] [--rows 1 2 3 4 8 16 32 64 128] [--threads 1]

An exact guide step multiplies R >= 2B rows (per beam: the HMM's marginal row, plus one joint row per live
DFA successor) with the (H, V) emission, against a floor of B rows. This times, for each R, torch's product
in both memory layouts (MKL on CPU), oneDNN with the emission packed once (the guide's CPU path, fewer than 4
rows padded to 4), and pc_core's log_matmul_exp_nt on the packed emission (exp/log shift included), each as
a multiple of the best one-row product measured in the same run. Writes docs/benchmarks.md (section "rows").
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._report import command, machine, table, write_section
from benchmarks.guide import timed
from pc_core.kernels import log_matmul_exp_nt, onednn_packed


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.row_product",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device="cpu").manual_seed(0)
    emission_t = torch.rand(args.vocab, args.hidden, generator=gen).to(
        device
    )  # (V, H), as the guide keeps it
    emission = emission_t.T.contiguous()  # (H, V)
    packed = onednn_packed.pack(emission_t)  # None on CUDA

    rows, one = [], None
    for r in args.rows:
        left = torch.rand(r, args.hidden, generator=gen).to(device)  # (R, H)
        times = {
            "(V, H) @ (H, R)": timed(lambda left=left: emission_t @ left.T, args.reps, device),
            "(R, H) @ (H, V)": timed(lambda left=left: left @ emission, args.reps, device),
        }
        if packed is not None:
            times["oneDNN packed"] = timed(
                lambda left=left: onednn_packed.matmul_nt(left, packed), args.reps, device
            )
        right = packed if packed is not None else emission_t
        times["log_matmul_exp_nt"] = timed(
            lambda left=left: log_matmul_exp_nt(left, right), args.reps, device
        )
        one = one or min(times.values())  # the first R (default 1: the floor of a one-beam step)
        rows.append([r, *(round(t * 1000, 1) for t in times.values()), round(min(times.values()) / one, 2)])
        print(rows[-1], flush=True)
    headers = ["R", *(f"{k} ms" for k in times), f"best / best at R = {args.rows[0]}"]
    body = (
        "## Emission product against row count\n\n"
        f"`{command()}`; {machine()}; H = {args.hidden}, V = {args.vocab}, fp32, median of {args.reps}. "
        "A guide step needs R >= 2B rows against the floor's B (see the guide section).\n\n"
        + table(headers, rows)
    )
    print(body)
    write_section("benchmarks.md", "rows", body)


if __name__ == "__main__":
    main()
