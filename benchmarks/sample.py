"""Sampling throughput of `pcgen distill sample` (tokens per second), with and without hidden states.

    python -m benchmarks.sample [--batches 2]

Times distill.sample.sample_batch (the KV-cached decoding loop the stage runs per batch: temperature 1,
full vocabulary, inverse-CDF draws) on randomly initialised GPT-2 architectures: decoding cost does not
depend on the weights, so no download is needed. CPU: GPT-2 small (124 M) in float32; GPU when CUDA is
present: GPT-2 large (774 M, the production teacher) in bfloat16. EOS is disabled so every sequence runs
the full T = 32 positions. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._report import machine, table, write_section
from distill.sample import sample_batch

T = 32
ARCHS = {
    "gpt2 (124M)": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-large (774M)": dict(n_layer=36, n_embd=1280, n_head=20),
}


def build(arch: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=1024, **ARCHS[arch])
    return GPT2LMHeadModel(config).to(device=device, dtype=dtype).eval()


def measure(
    arch: str, batch: int, device: torch.device, dtype: torch.dtype, batches: int, hidden: bool
) -> list:
    model = build(arch, device, dtype)
    gen = torch.Generator().manual_seed(0)
    run = lambda: sample_batch(
        model,
        [[50256]] * batch,
        torch.rand((batch, T), generator=gen, dtype=torch.float64).to(device),
        50257,
        None,  # no EOS: every sequence decodes all T positions
        50256,
        hidden_layer=-1 if hidden else None,
    )
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(batches):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    where = (
        f"cpu, {torch.get_num_threads()} thread(s)"
        if device.type == "cpu"
        else torch.cuda.get_device_name(device)
    )
    return [
        arch,
        str(dtype).replace("torch.", ""),
        where,
        batch,
        "yes" if hidden else "no",
        round(batch * T * batches / seconds),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sample")
    parser.add_argument("--batches", type=int, default=2, help="timed batches per row (after one warm-up)")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="CPU threads"
    )
    args = parser.parse_args()
    cpu = torch.device("cpu")
    configs = [("gpt2 (124M)", 32, cpu, torch.float32, h, n) for n in args.threads for h in (False, True)]
    gpu_note = "GPT-2 large on GPU: not measured (no CUDA device in this run)."
    if torch.cuda.is_available():
        gpu_note = ""
        cuda = torch.device("cuda")
        configs += [("gpt2-large (774M)", 512, cuda, torch.bfloat16, h, None) for h in (False, True)]
    rows = []
    for config in configs:
        arch, batch, device, dtype, hidden, threads = config
        if threads:
            torch.set_num_threads(threads)
        rows.append(measure(arch, batch, device, dtype, args.batches, hidden))
        print(rows[-1], flush=True)
    headers = ["architecture (random init)", "dtype", "device", "batch", "hidden states", "tokens/s"]
    body = (
        "## Sampling (distill.sample)\n\n"
        f"`python -m benchmarks.sample --batches {args.batches} --threads {' '.join(map(str, args.threads))}`; "
        f"KV-cached ancestral sampling, T = {T} tokens "
        f"per sequence, V = 50257, EOS disabled (every position decoded); 'hidden states' also keeps the "
        f"last layer's state per token (what --save-embeddings stores). {machine()}. {gpu_note}\n\n"
        + table(headers, rows)
    )
    print(body)
    write_section("benchmarks.md", "sample", body)


if __name__ == "__main__":
    main()
